//! The `rlrig` command line.

fn main() {
    std::process::exit(rlrig::cli::main(rlrig::builtin_registry()));
}
