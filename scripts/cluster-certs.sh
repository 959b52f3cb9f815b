#!/usr/bin/env bash
# Makes a CA and one certificate per cluster member for rlrig's mutual TLS between nodes.
#
#   scripts/cluster-certs.sh DIR NAME=HOST[,HOST...] [NAME=HOST[,HOST...] ...]
#
#   scripts/cluster-certs.sh certs coordinator=10.0.0.2 gpu-box-1=10.0.0.5,gpu-box-1.lan
#
# writes DIR/ca.pem and DIR/ca.key (the CA: keep ca.key off the nodes), and DIR/NAME.pem and
# DIR/NAME.key for each member. A node's certificate must name the host that flows use in its
# address (`[nodes.NAME] address = "HOST:PORT"`); an IP address or a DNS name both work. Each
# certificate serves both directions (server and client auth). An existing CA in DIR is
# reused, so members can be added later. Needs openssl (1.1.1 or newer).
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
dir=$1
shift
mkdir -p "$dir"
umask 077

if [ ! -f "$dir/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=rlrig cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  echo "$dir/ca.pem (new CA)"
fi

for member in "$@"; do
  name=${member%%=*}
  hosts=${member#*=}
  if [ "$name" = "$member" ] || [ -z "$name" ] || [ -z "$hosts" ]; then
    echo "error: $member: expected NAME=HOST[,HOST...]" >&2
    exit 2
  fi
  san=""
  IFS=',' read -ra list <<< "$hosts"
  for h in "${list[@]}"; do
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then
      san+="IP:$h,"
    else
      san+="DNS:$h,"
    fi
  done
  san=${san%,}
  ext=$(mktemp)
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=$san" > "$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$name" -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 825 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
  rm -f "$ext" "$dir/$name.csr"
  echo "$dir/$name.pem ($san)"
done
