"""sample_bits (the hash behind advx._rng) against its plain-PyTorch twin on every device:
odd sizes, 64-bit indices and draws, non-contiguous inputs; opcheck; bad input."""
import pytest
import torch

from advx import ops, reference


def _inputs(rows, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    # indices across the whole int64 range (the high word matters), draws past 2**32 and negative
    indices = torch.randint(0, 2 ** 62, (rows,), generator=g) * torch.randint(1, 3, (rows,), generator=g)
    draws = torch.randint(-2 ** 40, 2 ** 40, (rows,), generator=g)
    return indices.to(device), draws.to(device)


@pytest.mark.parametrize("rows,count", [(0, 5), (1, 1), (3, 0), (7, 13), (257, 3), (64, 1000), (4099, 1)])
def test_equals_the_reference(device, rows, count):
    indices, draws = _inputs(rows, device, seed=rows * 31 + count)
    key = int(torch.randint(0, 2 ** 32, ()).item())
    got = ops.sample_bits(indices, draws, key, count)
    want = reference.sample_bits(indices, draws, key, count)
    assert got.dtype == torch.int64 and got.device == indices.device and got.shape == (rows, count)
    assert torch.equal(got, want)
    if got.numel():
        assert int(got.min()) >= 0 and int(got.max()) < 2 ** 32


def test_non_contiguous_and_broadcast_inputs(device):
    indices, draws = _inputs(40, device, seed=3)
    key = 0x9E3779B9
    want = reference.sample_bits(indices[::2], draws[1::2], key, 6)
    assert torch.equal(ops.sample_bits(indices[::2], draws[1::2], key, 6), want)
    one = draws[:1].expand(40)  # stride 0: one draw for every row
    assert torch.equal(ops.sample_bits(indices, one, key, 6), reference.sample_bits(indices, one.clone(), key, 6))


def test_rows_are_independent_of_their_batch(device):
    indices, draws = _inputs(50, device, seed=5)
    whole = ops.sample_bits(indices, draws, 12345, 9)
    rows = torch.tensor([49, 0, 17, 17], device=device)
    assert torch.equal(ops.sample_bits(indices[rows], draws[rows], 12345, 9), whole[rows])
    # every input changes the bits
    assert not torch.equal(ops.sample_bits(indices, draws, 12346, 9), whole)
    assert not torch.equal(ops.sample_bits(indices, draws + 1, 12345, 9), whole)
    assert not torch.equal(ops.sample_bits(indices + 2 ** 32, draws, 12345, 9), whole)


def test_the_bits_look_uniform():
    bits = ops.sample_bits(torch.arange(2000), torch.zeros(2000, dtype=torch.int64), 7, 64)
    ones = torch.stack([(bits >> k) & 1 for k in range(32)]).double().mean(dim=(1, 2))
    assert float((ones - 0.5).abs().max()) < 0.01  # every bit set half the time
    assert bits.unique().numel() > 0.999 * bits.numel()


def test_opcheck(device):
    indices, draws = _inputs(6, device, seed=9)
    torch.library.opcheck(torch.ops.advx.sample_bits.default, (indices, draws, 77, 5))


def test_bad_input_names_the_argument(device):
    indices, draws = _inputs(4, device)
    with pytest.raises(TypeError, match="indices must have dtype torch.int64"):
        ops.sample_bits(indices.int(), draws, 1, 3)
    with pytest.raises(TypeError, match="draws must have dtype torch.int64"):
        ops.sample_bits(indices, draws.double(), 1, 3)
    with pytest.raises(ValueError, match="indices must have shape"):
        ops.sample_bits(indices.reshape(2, 2), draws, 1, 3)
    with pytest.raises(ValueError, match="draws must have shape"):
        ops.sample_bits(indices, draws[:3], 1, 3)
    with pytest.raises(ValueError, match="key must lie in"):
        ops.sample_bits(indices, draws, 2 ** 32, 3)
    with pytest.raises(ValueError, match="key must lie in"):
        ops.sample_bits(indices, draws, -1, 3)
    with pytest.raises(ValueError, match="count must be non-negative"):
        ops.sample_bits(indices, draws, 1, -1)
    with pytest.raises(TypeError, match="draws must be a torch.Tensor"):
        ops.sample_bits(indices, [1, 2, 3, 4], 1, 3)
    if indices.device.type != "cpu":
        with pytest.raises(ValueError, match="draws is on"):
            ops.sample_bits(indices, draws.cpu(), 1, 3)
