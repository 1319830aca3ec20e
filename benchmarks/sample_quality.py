"""Sample quality on one scale: FID, KID and precision/recall of every process on the digits.

NGLDM's table done right. Each model is a run of the training job from a shipped config,
all with the same denoiser (the MLP, width 256, depth 3), optimiser, batch, `--steps` and
seed; the DDPM rows differ only in `process.noise` (`digits_ddpm.yaml`: T = 1000 linear
betas, the noise-prediction MSE on DDPM's steps), the `latent_*` rows are the
same DDPMs on the latents of one autoencoder (`adaptive-diffusion autoencoder`, 3000
steps, 2 x 4 x 4 latents for the 8 x 8 digits, trained once per `--workdir`); the others
are the VP/VDM, non-isotropic, MuLAN and MDM configs as shipped, trained on their bounds.
Every model is then evaluated by the command line users run,
`adaptive-diffusion eval --method fid|kid|pr`:
`--num-samples` samples of the EMA weights from the config's sampler (ancestral, on
DDPM's T - 1 latents or 1000 steps), against the whole test split (297 digits), in the
features of the classifier trained on the train split's labels (the same cached
classifier for every model, since its cache key is the train split). The `data` row is
`--num-samples` train digits in place of samples: the floor of every figure at these
set sizes (FID is biased upward at small sizes).

Rows are appended to the JSON file as each model finishes; models already in it are
skipped, and a run folder already holding checkpoints is resumed (its `train_s` is then
`null`), its cached samples reused. A sample grid per model is written beside the JSON.

    python benchmarks/sample_quality.py --steps 8000
"""

import argparse
import json
import pathlib
import time

import numpy as np

from _report import machine, write_report
from adaptive_diffusion import metrics, train as ad_train
from adaptive_diffusion.data import DigitsSource


_NOISES = ("gaussian", "laplace", "uniform", "gumbel", "exponential", "student_t")
_LATENT = "process.autoencoder={autoencoder}"
MODELS: dict[str, tuple[str, list[str]]] = {
    **{f"ddpm_{n}": ("digits_ddpm", [f"process.noise={n}"]) for n in _NOISES},
    **{f"latent_{n}": ("digits_ddpm", [f"process.noise={n}", _LATENT]) for n in _NOISES},
    "vdm": ("digits", []),
    "nonisotropic": ("digits_nonisotropic", []),
    "mulan": ("digits_mulan", []),
    "mdm_cld": ("digits_mdm", []),
}
"""Name -> (shipped config, overrides); `{autoencoder}` is the run's autoencoder folder."""


def _data_row(num: int, feature_steps: int, cache: pathlib.Path) -> dict:
    """The train digits themselves as the samples."""
    train_split, test = DigitsSource("train"), DigitsSource("test")
    picks = np.random.default_rng(0).choice(len(train_split), num, replace=False)
    extractor = metrics.classifier_features(
        train_split, cache_dir=cache, test=test, steps=feature_steps
    )
    row = {}
    for method in ad_train.QUALITY_METHODS:
        figure = ad_train.sample_quality(
            method,
            train_split.images[picks],
            test,
            extractor,
            extractor_accuracy=extractor.accuracy,
        )
        row[method] = figure.as_json()
    return row


def _model_row(name: str, args: argparse.Namespace, out_dir: pathlib.Path) -> dict:
    config, overrides = MODELS[name]
    autoencoder = pathlib.Path(args.workdir) / "autoencoder"
    if any("{autoencoder}" in item for item in overrides) and not autoencoder.is_dir():
        ae_args = ["autoencoder", "--workdir", str(autoencoder), "--steps", "3000"]
        assert ad_train.main([*ae_args, "--seed", str(args.seed)]) == 0
    overrides = [item.format(autoencoder=autoencoder) for item in overrides]
    workdir = pathlib.Path(args.workdir) / name
    started = time.perf_counter()
    train_args = ["train", "--config", config, "--workdir", str(workdir), "--no-progress"]
    for item in [*overrides, f"steps={args.steps}", f"seed={args.seed}"]:
        train_args += ["--set", item]
    resumed = (workdir / "checkpoints").is_dir()
    assert ad_train.main([*train_args, *(["--resume"] if resumed else [])]) == 0, name
    train_s = None if resumed else time.perf_counter() - started
    row = {"config": config, "overrides": overrides, "train_s": train_s}
    common = ["--checkpoint", str(workdir), "--num-samples", str(args.num_samples)]
    common += ["--feature-steps", str(args.feature_steps), "--no-progress"]
    common += ["--feature-cache", str(pathlib.Path(args.workdir) / "features")]
    for method in ad_train.QUALITY_METHODS:
        path = out_dir / f"{name}_{method}.json"
        assert ad_train.main(["eval", *common, "--method", method, "--out", str(path)]) == 0
        row[method] = json.loads(path.read_text())
        path.unlink()
    grid = out_dir / f"{name}.png"
    sample_args = ["sample", "--checkpoint", str(workdir), "--num", "64", "--no-progress"]
    sample_args += ["--steps", str(row["fid"]["steps"]), "--out", str(grid)]
    assert ad_train.main(sample_args) == 0
    return row


def _table(rows: dict) -> str:
    lines = [
        "| model | FID [95% bootstrap] | KID x 1e3 (+- std) | precision | recall |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        fid, kid, pr = row["fid"], row["kid"], row["pr"]
        kid_std = (kid["high"] - kid["low"]) / 2
        lines.append(
            f"| {name} | {fid['value']:.3f} [{fid['low']:.3f}, {fid['high']:.3f}] | "
            f"{1e3 * kid['value']:.2f} +- {1e3 * kid_std:.2f} | {pr['value']:.3f} | "
            f"{pr['recall']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--feature-steps", type=int, default=1500)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--workdir", default="runs/sample_quality")
    parser.add_argument("--out", default="benchmarks/results/sample_quality.json")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("machine", machine())
    report.setdefault("settings", vars(args))
    rows = report.setdefault("rows", {})
    if "data" not in rows:
        cache = pathlib.Path(args.workdir) / "features"
        rows["data"] = _data_row(args.num_samples, args.feature_steps, cache)
        write_report(out, report)
    for name in args.models:
        if name in rows:
            continue
        rows[name] = _model_row(name, args, out.parent)
        write_report(out, report)
        print(_table(rows))
    print(_table(rows))


if __name__ == "__main__":
    main()
