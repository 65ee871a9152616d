"""`advx demo`: the whole library on scikit-learn's digits in well under three minutes
on two CPU cores. Trains (or loads) a small CNN, measures clean and robust accuracy,
compares optimizers on a targeted attack, sets random perturbations beside the
adversarial radius, renders class visualizations with and without the multiscale
edge-energy prior, times the fused ops against their references, and writes
report.md, results.json and PNG figures into the output directory."""
from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import advx
from advx import attacks, viz
from advx._runtime import json_ready
from advx.bench import format_table, quick_timing
from advx.data import load_digits
from advx.eval import random_sphere, robust_accuracy
from advx.models import digits_cnn_path, train_digits_cnn

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    n_test: int | None          # test images for robust accuracy (None: all 450)
    eps_linf: tuple
    eps_l2: tuple
    pgd_steps: int
    optim_images: int           # images and steps of the optimizer comparison
    optim_steps: int
    sphere_images: int          # images, ascent steps and random points of the random-sphere check
    ascent_steps: int
    sphere_points: int
    viz_steps: int
    timing_shape: tuple

    @classmethod
    def make(cls, quick: bool) -> "DemoConfig":
        if quick:
            return cls(n_test=200, eps_linf=(0.05, 0.1), eps_l2=(0.5, 1.0), pgd_steps=10,
                       optim_images=50, optim_steps=40, sphere_images=20, ascent_steps=100, sphere_points=200,
                       viz_steps=60, timing_shape=(64, 3, 32, 32))
        return cls(n_test=None, eps_linf=(0.05, 0.1, 0.2), eps_l2=(0.5, 1.0, 2.0), pgd_steps=20,
                   optim_images=100, optim_steps=100, sphere_images=50, ascent_steps=300, sphere_points=1000,
                   viz_steps=250, timing_shape=(128, 3, 32, 32))


class _Log:
    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def section(self, name: str, message: str):
        self.current, self.start = name, time.perf_counter()
        if self.verbose:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", flush=True)

    def done(self):
        self.seconds[self.current] = round(time.perf_counter() - self.start, 3)


@torch.no_grad()
def _predict(model, x):
    probs = model(x).softmax(dim=1)
    conf, pred = probs.max(dim=1)
    return pred, conf


def _robustness(model, images, labels, cfg: DemoConfig, device):
    # budgets=: every budget of a norm in one attack call per batch, one row each
    linf = [attacks.FGSM(model, 0.1), attacks.PGD(model, 0.1, steps=cfg.pgd_steps, norm="linf", seed=0)]
    l2 = [attacks.PGD(model, 0.5, steps=cfg.pgd_steps, norm="l2", seed=0)]
    reports = [robust_accuracy(model, (images, labels), suite, budgets=list(budgets), batch_size=512,
                               device=device, progress=False)
               for suite, budgets in ((linf, cfg.eps_linf), (l2, cfg.eps_l2))]
    steps = {"FGSM": 1, "PGD": cfg.pgd_steps}
    rows = [dict(r, steps=steps.get(r["name"])) for rep in reports for r in rep.rows]
    return reports[0].clean_accuracy, rows


def _optimizer_comparison(model, images, labels, cfg: DemoConfig):
    """The optimizer comparison: the same targeted attack with SGD, RMSprop and Adam on
    the perturbation, same learning rate, inside the same L2 ball."""
    x, y = images[:cfg.optim_images], labels[:cfg.optim_images]
    target = (y + 1) % 10
    # a learning rate small enough that the three differ visibly on this model
    eps, lr = 2.0, 0.005
    curves, rows = {}, []
    for name in ("sgd", "rmsprop", "adam"):
        atk = attacks.PGD(model, eps, steps=cfg.optim_steps, norm="l2", optimizer=name, lr=lr,
                          targeted=True, random_start=False)
        res = atk.run(x, target, record_loss=True)
        curves[name] = res.loss_history
        hit = res.first_success[res.first_success >= 0]
        rows.append({"optimizer": name, "lr": lr, "initial_loss": res.loss_history[0],
                     "final_loss": float(res.loss.mean()),
                     "success_rate": res.success_rate, "mean_l2": float(res.norm.mean()),
                     "median_first_success": float(hit.float().median()) if hit.numel() else None})
    return {"targeted": True, "norm": "l2", "eps": eps, "lr": lr, "steps": cfg.optim_steps,
            "n_images": int(x.shape[0]), "results": rows}, curves


def _random_sphere(model, images, labels, cfg: DemoConfig):
    """The random-sphere check: gradient ascent on the loss until the label flips gives
    each image an adversarial radius r; random points at distance r and 2r rarely change
    the label."""
    x, y = images[:cfg.sphere_images], labels[:cfg.sphere_images]
    # small steps: the first iterate past the boundary then measures the radius tightly
    res = attacks.GradientAscent(model, lr=0.1, steps=cfg.ascent_steps).run(x, y)
    ok = res.success
    radius = res.norm[ok]
    out = {"n_images": int(x.shape[0]), "ascent_success_rate": res.success_rate,
           "n_points": cfg.sphere_points, "clamp": False}
    if ok.any():
        out["adversarial_l2_radius_mean"] = float(radius.mean())
        out["ascent_steps_median"] = float(res.first_success[ok].float().median())
        for factor in (1, 2):
            changed = random_sphere(model, x[ok], factor * radius, n=cfg.sphere_points, labels=y[ok],
                                    clamp=False, seed=0)
            out[f"changed_at_{factor}x_radius"] = float(changed.mean())
            out[f"images_with_any_change_at_{factor}x"] = int((changed > 0).sum())
    return out, res


def _visualizations(model, cfg: DemoConfig, device, out: Path):
    classes = list(range(10))
    runs = {"no prior": dict(prior_weight=0.0), "edge-energy prior": dict(prior_weight=1.0)}
    images, titles, summary = [], [], {}
    for label, kwargs in runs.items():
        v = viz.maximize_response(model, classes, shape=(1, 1, 8, 8), steps=cfg.viz_steps, lr=0.1,
                                  device=device, **kwargs)
        pred, conf = _predict(model, v.image)
        images.append(v.rendered.cpu())
        titles += [f"class {c}: {100 * float(p):.0f}%" + ("" if int(q) == c else f", predicted {int(q)}")
                   for c, q, p in zip(classes, pred, conf)]
        summary[label] = {"predicted_as_target": int((pred.cpu() == torch.tensor(classes)).sum()),
                          "mean_confidence": float(conf.mean()),
                          "mean_logit": float(v.response.mean()),
                          "pixel_std": float(v.image.std()),
                          "mean_edge_energy": float(advx.ops.edge_energy(v.image).mean())}
    path = viz.plot_grid(torch.cat(images), titles, out / "class_visualizations.png", ncols=10,
                         row_labels=list(runs),
                         title="maximize each class logit from noise (over each image: the target class and "
                               "the model's confidence in it)")
    return summary, path


def _report(results: dict, out: Path) -> str:
    r = results
    lines = [
        "# advx demo report", "",
        f"Generated {r['date']} on {r['device']} ({r['threads']} CPU threads), torch {r['torch_version']}, "
        f"advx {r['advx_version']}{' (--quick)' if r['quick'] else ''}, in {r['seconds']['total']:.1f} s.", "",
        "## Model", "",
        f"A small CNN on scikit-learn's 8x8 digits ({r['n_train']} train / {r['n_test']} test images, "
        f"pixels in [0, 1]), {r['model_source']}.", "",
        f"**Clean accuracy: {r['clean_accuracy']:.4f}**", "",
        "## Robust accuracy", "",
        "Fraction of the test images still classified correctly under each attack "
        "(a sample already wrong counts as not robust).", "",
        "| attack | norm | eps | steps | robust accuracy |", "|---|---|---:|---:|---:|",
        f"| none | - | - | - | {r['clean_accuracy']:.4f} |",
    ]
    lines += [f"| {a['name']} | {a['norm']} | {a['eps']:.3g} | {a['steps']} | {a['robust_accuracy']:.4f} |"
              for a in r["attacks"]]
    lines += ["", "![adversarial examples](adversarial_pgd.png)", ""]
    oc = r["optimizers"]
    lines += ["## Optimizers on a targeted attack", ""]
    lines += [
        f"Target class y+1 for {oc['n_images']} test images, cross-entropy to the target minimized "
        f"over the perturbation inside an L2 ball of radius {oc['eps']}, lr {oc['lr']} for every "
        f"optimizer, {oc['steps']} steps.", "",
        "| optimizer | final loss | success rate | mean L2 | median steps to success |",
        "|---|---:|---:|---:|---:|"]
    for o in oc["results"]:
        med = "-" if o["median_first_success"] is None else f"{o['median_first_success']:.0f}"
        lines.append(f"| {o['optimizer']} | {o['final_loss']:.4f} | {o['success_rate']:.2f} | "
                     f"{o['mean_l2']:.3f} | {med} |")
    lines += ["", "![loss curves](loss_curves.png)", ""]
    rs = r["random_sphere"]
    lines += ["## Random perturbations vs the adversarial radius", ""]
    if "adversarial_l2_radius_mean" in rs:
        lines += [
            f"Unconstrained gradient ascent on the loss flipped the label of "
            f"{100 * rs['ascent_success_rate']:.0f}% of {rs['n_images']} test images, after a median of "
            f"{rs['ascent_steps_median']:.0f} steps, at a mean L2 distance r = "
            f"{rs['adversarial_l2_radius_mean']:.3f}. Of {rs['n_points']} random points per image on the "
            f"sphere of radius r, {100 * rs['changed_at_1x_radius']:.2f}% change the label; at radius 2r, "
            f"{100 * rs['changed_at_2x_radius']:.2f}% ({rs['images_with_any_change_at_2x']} images with any change). "
            "On ImageNet-sized images, 1,000 random points at 2r are reported to change no label; with "
            "64 pixels instead of 150,000, a random direction is far more likely to point somewhere "
            "adversarial.",
            "", "![gradient ascent examples](adversarial_ascent.png)", ""]
    else:
        lines += ["Gradient ascent flipped no label, so there is no radius to compare with.", ""]
    lines += ["## Class visualizations", "",
              f"Each image maximizes one class logit from small noise with Adam ({r['viz_steps']} steps), "
              "minus the edge-energy penalty in the second row (rows labelled at the left), each drawn with "
              "its own contrast stretch (its 1st and 99th percentiles to black and white) to show its structure; "
              "titles give the model's confidence (and its class when it is not the target).", ""]
    lines += ["| run | predicted as target | mean confidence | mean logit | pixel std | mean edge energy |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['predicted_as_target']}/10 | {v['mean_confidence']:.3f} | {v['mean_logit']:.1f} | "
              f"{v['pixel_std']:.3f} | {v['mean_edge_energy']:.1f} |"
              for k, v in r["visualizations"].items()]
    lines += ["", "![class visualizations](class_visualizations.png)", "",
              "## Fused ops vs reference on this machine", "",
              f"Median times in this run, float32, {r['device']}; speedup > 1: advx.ops is faster than "
              "advx.reference (eager PyTorch).", "", format_table(r["timing"]), "",
              "## Time per section", "", "| section | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["seconds"].items()]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def run_demo(out="advx-demo", *, device=None, quick: bool = False, cache_dir=None, threads: int | None = 1,
             verbose: bool = True) -> dict:
    """Run the demo, write ``out``/report.md, results.json and the figures; return the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    previous_threads = torch.get_num_threads()
    if threads:
        # The digits network is tiny: more threads mostly add synchronization, and on
        # a shared machine they can make each step several times slower.
        torch.set_num_threads(threads)
    try:
        return _run(out, device, DemoConfig.make(quick), quick, cache_dir, verbose)
    finally:
        torch.set_num_threads(previous_threads)


def _run(out: Path, device, cfg: DemoConfig, quick: bool, cache_dir, verbose: bool) -> dict:
    log = _Log(verbose)
    torch.manual_seed(0)
    split = load_digits()
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": str(device),
               "threads": torch.get_num_threads(), "torch_version": torch.__version__,
               "advx_version": advx.__version__, "quick": quick, "n_train": len(split.train_labels)}

    log.section("model", "digits CNN: load from cache or train")
    t = time.perf_counter()
    cached = digits_cnn_path(cache_dir)
    was_cached = cached.exists()
    model = train_digits_cnn(cache_dir, device=device)
    results["model_source"] = (f"loaded from {cached}" if was_cached else
                               f"trained in {time.perf_counter() - t:.1f} s and cached in {cached}")
    log.done()

    x_test, y_test = split.test_images.to(device), split.test_labels.to(device)
    if cfg.n_test is not None:
        x_test, y_test = x_test[:cfg.n_test], y_test[:cfg.n_test]
    results["n_test"] = int(y_test.shape[0])
    log.section("robust_accuracy", f"clean and robust accuracy on {results['n_test']} test images")
    results["clean_accuracy"], results["attacks"] = _robustness(model, x_test, y_test, cfg, device)
    log.done()
    if verbose:
        print(f"         clean accuracy {results['clean_accuracy']:.4f}; " + ", ".join(
            f"{a['name']} {a['norm']} {a['eps']:g}: {a['robust_accuracy']:.3f}" for a in results["attacks"]))

    with torch.no_grad():
        correct = model(x_test).argmax(1) == y_test
    x_ok, y_ok = x_test[correct], y_test[correct]
    figures = []

    log.section("adversarial_figure", "adversarial examples figure (PGD linf, eps 0.1)")
    res = attacks.PGD(model, 0.1, steps=cfg.pgd_steps, norm="linf", seed=0).run(x_ok[:64], y_ok[:64])
    # the first four images the attack fooled, else whatever it produced
    pick = viz.pick_examples(res.success, 4).to(x_ok.device)
    x4, adv = x_ok[pick], res.adv[pick]
    (p0, c0), (p1, c1) = _predict(model, x4), _predict(model, adv)
    figures.append(viz.plot_adversarial(
        x4, adv, p0, c0, p1, c1, out / "adversarial_pgd.png", true_labels=y_ok[pick],
        title="PGD L-inf, eps 0.1, on correctly classified test digits\n"
              + viz.examples_title(res.success, pick.cpu())).name)
    log.done()

    log.section("optimizers", "SGD / RMSprop / Adam on a targeted attack")
    results["optimizers"], curves = _optimizer_comparison(model, x_ok, y_ok, cfg)
    figures.append(viz.plot_loss_curves(
        curves, out / "loss_curves.png", ylabel="cross-entropy to the target", log_y=True,
        title=f"targeted attack, L2 ball {results['optimizers']['eps']}, lr {results['optimizers']['lr']}").name)
    log.done()

    log.section("random_sphere", "random perturbations beside the adversarial radius")
    results["random_sphere"], ascent = _random_sphere(model, x_ok, y_ok, cfg)
    n = min(4, int(ascent.success.sum()))
    if n:
        xs, advs = x_ok[:cfg.sphere_images][ascent.success][:n], ascent.adv[ascent.success][:n]
        (p0, c0), (p1, c1) = _predict(model, xs), _predict(model, advs)
        # GradientAscent keeps pixels in [0, 1] (its default bounds), so nothing is clipped for display
        figures.append(viz.plot_adversarial(
            xs, advs, p0, c0, p1, c1, out / "adversarial_ascent.png",
            true_labels=y_ok[:cfg.sphere_images][ascent.success][:n],
            title=f"gradient ascent on the loss until the label flips (no budget; pixels kept in [0, 1])\n"
                  f"the first {n} of {int(ascent.success.sum())} images it flipped").name)
    log.done()

    log.section("visualizations", "class visualizations with and without the edge-energy prior")
    results["visualizations"], path = _visualizations(model, cfg, device, out)
    results["viz_steps"] = cfg.viz_steps
    figures.append(path.name)
    log.done()

    log.section("timing", "fused advx.ops vs advx.reference")
    results["timing"] = quick_timing(device, shape=cfg.timing_shape, quick=quick)
    log.done()

    results["figures"] = figures
    results["seconds"] = dict(log.seconds, total=round(time.perf_counter() - log.t0, 3))
    (out / "results.json").write_text(json.dumps(json_ready(results), indent=2) + "\n")
    _report(results, out)
    if verbose:
        print(f"[{results['seconds']['total']:6.1f}s] wrote {out / 'report.md'}, {out / 'results.json'} "
              f"and {len(figures)} figures")
    return results
