"""Reference schedules for the timestep spacings the main fixtures do not cover.

SD-Turbo samples with `timestep_spacing = "trailing"` in 1-4 steps; `linspace` is diffusers'
default. Writes actors/sd/tests/fixtures/refs/spacings.json: for DDIM and Euler-discrete,
each spacing and n in (1, 2, 4, 25), the timesteps, Euler's sigmas and init_noise_sigma.

    python scripts/sd_fixtures/spacing_refs.py [--out PATH]
"""
import argparse
import json
from pathlib import Path

from diffusers import DDIMScheduler, EulerDiscreteScheduler

BASE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
)


def main():
    ap = argparse.ArgumentParser()
    root = Path(__file__).resolve().parents[2]
    ap.add_argument("--out", default=str(root / "actors/sd/tests/fixtures/refs/spacings.json"))
    out = Path(ap.parse_args().out)
    cases = []
    for cls, extra in (
        (DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False)),
        (EulerDiscreteScheduler, dict()),
    ):
        for spacing in ("linspace", "leading", "trailing"):
            config = dict(BASE, timestep_spacing=spacing, **extra)
            sch = cls(**config)
            for n in (1, 2, 4, 25):
                sch.set_timesteps(n)
                case = {
                    "config": dict(config, _class_name=cls.__name__),
                    "n": n,
                    "timesteps": [float(t) for t in sch.timesteps],
                    "init_noise_sigma": float(sch.init_noise_sigma),
                }
                if cls is EulerDiscreteScheduler:
                    case["sigmas"] = [float(s) for s in sch.sigmas]
                cases.append(case)
    out.write_text(json.dumps({"cases": cases}, indent=1) + "\n")
    print(f"{len(cases)} cases -> {out}")


if __name__ == "__main__":
    main()
