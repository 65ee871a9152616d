"""Arguments are checked once, where they enter, and the package's layers import
downwards only: the fused ops with tensor budgets compile into one graph (no check
breaks it), an attack's steps never wait for the GPU, and no module imports one above it."""
import ast
from pathlib import Path

import pytest
import torch

import advx
from advx import ops
from advx.attacks import PGD, Attack

from _attack_models import forbid_syncs, images, predicted, small_cnn

PACKAGE = Path(advx.__file__).resolve().parent
HAVE_CUDA = torch.cuda.is_available() and advx.build_info()["cuda"]


def test_torch_compile_fullgraph_with_tensor_budgets(device):
    x = torch.rand(4, 3, 6, 6, device=device)
    g, xo = torch.randn_like(x), x.clone()
    eps = torch.tensor([0.05, 0.1, 0.2, 0.4], device=device)
    alpha = eps / 4

    def attack_step(x_adv, grad, x_orig, eps, alpha):
        ops.pgd_step_(x_adv, grad, x_orig, eps, alpha, "linf")
        ops.project_(x_adv, eps * 2, "l2")
        return x_adv * 2

    compiled = torch.compile(attack_step, fullgraph=True, backend="aot_eager")  # a graph break raises
    a, b = x.clone(), x.clone()
    torch.testing.assert_close(compiled(a, g, xo, eps, alpha), attack_step(b, g, xo, eps, alpha))
    torch.testing.assert_close(a, b)


def test_tensor_budget_values_are_checked_once_by_the_attack():
    model = small_cnn()
    with pytest.raises(ValueError, match="eps must be positive"):
        PGD(model, torch.tensor([0.1, float("nan")]))
    # the op's Python side reads no tensor values (the CPU kernel checks them itself)
    x = torch.rand(2, 5)
    with pytest.raises(ValueError, match="eps must be positive and finite"):
        ops.project_(x, torch.tensor([0.1, 0.0]), "linf")


def test_sparse_inputs_name_the_argument():
    # every op has the kernel that names a sparse argument (csrc/registration.cpp lists them)
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("advx::")]
    assert names and all(torch._C._dispatch_has_kernel_for_dispatch_key(n, "SparseCPU") for n in names)
    with pytest.raises(TypeError, match="delta has layout"):
        ops.project_(torch.rand(2, 5).to_sparse(), 0.1, "linf")
    params = [torch.rand(3, 2)]
    with pytest.raises(TypeError, match=r"grads\[0\] has layout"):
        ops.sgd_step_(params, [torch.rand(3, 2).to_sparse()], [], lr=0.1)


@pytest.mark.skipif(not HAVE_CUDA, reason="needs a GPU and advx built with CUDA")
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("budget", ["float", "per-sample tensor"])
def test_attack_steps_do_not_sync(norm, budget, monkeypatch):
    model = small_cnn("cuda")
    x = images(8, device="cuda")
    y = predicted(model, x)
    eps = 0.1 if budget == "float" else torch.linspace(0.05, 0.2, 8, device="cuda")
    atk = PGD(model, eps, steps=5, norm=norm, seed=0)  # the tensor's values are checked here, once
    forbid_syncs(monkeypatch, Attack, "_loop")  # any host sync in the steps raises
    adv = atk(x, y)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    limit = torch.as_tensor(eps, device="cuda", dtype=x.dtype)
    assert bool((size <= limit * (1 + 1e-5)).all())


# -- the layers: a module imports only modules on its own floor or below -------------------

FLOORS = [
    {"_C", "_validate", "_runtime", "_rng", "_checkpoint", "_distributed", "_accel"},
    {"ops", "reference"},
    {"optim", "constraints", "prior", "nn", "quantize"},
    {"attacks", "viz", "data", "models"},
    {"eval", "bench"},  # bench times evaluations too
    {"demo", "__init__"},  # __init__: a name from the package's front door, which imports floors 0-4
    {"cli", "__main__"},
]


def _floor(module: str) -> int:
    top = module.split(".")[0]
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(f"advx.{module} is on no floor of this test: add it to FLOORS")


def _advx_imports(path: Path) -> set:
    """advx submodules (relative to the package) imported anywhere in the file."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = parts[:-1]  # the package a relative import starts from
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name[len("advx."):] for a in node.names if a.name.startswith("advx.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - (node.level - 1)])
                if node.module:
                    base += node.module.split(".")
            elif node.module and (node.module == "advx" or node.module.startswith("advx.")):
                base = node.module.split(".")[1:]
            else:
                continue
            if base:
                found.add(".".join(base))
            else:  # from advx import ops, viz, __version__
                found |= {a.name if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()
                          else "__init__" for a in node.names}
    return found


def test_imports_run_downwards_only():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module == "__init__":
            continue  # the package's front door imports floors 0-4
        here = _floor(module)
        for imported in _advx_imports(path):
            if _floor(imported) > here:
                wrong.append(f"advx.{module} imports advx.{imported}")
    assert not wrong, "imports from a lower layer to a higher one:\n" + "\n".join(wrong)
