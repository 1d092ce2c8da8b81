"""Precision: the retrieval head is float32 under bf16 autocast, and ``precision=auto`` picks bf16 only where the
hardware computes it natively."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pqattack.attacks import LOSSES, Reference, codeword_spread
from pqattack.runtime import cpu_has_native_bf16, resolve_precision
from pqattack.stages.attack import retrieval_model


def head_in_float64(model, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Normalisation, eq. (7) logits and log-softmax computed independently in float64 from the backbone output."""
    z = F.normalize(f.double(), dim=1)
    sub = z.view(z.shape[0], model.M, -1)
    logits = torch.einsum("bmd,mkd->bmk", sub, model.codebooks.double()) / model.temperature
    return z, torch.log_softmax(logits, -1)


@pytest.mark.parametrize("bits", [16, 32])
def test_losses_and_gradients_under_bf16_autocast_match_a_float64_head(trained_demo, bits: int) -> None:
    """Under bf16 autocast the backbone runs in bf16; the head must not: each loss and its gradient with respect
    to the images match the same backbone with a float64 head (cosine >= 0.999), and APD's peak codes are equal.
    (With the head under autocast, AOD's gradient cosine was about 0.2.)"""
    job, data, target = trained_demo
    if bits != 16:
        from pqattack.quant import train_codebooks

        target = type(target)(**{**target.__dict__, "codebooks": train_codebooks(target.features["database"], 4, 256)})
    model = retrieval_model(job, target, torch.device("cpu"))
    x = data.query.images[:64].float() / 255
    x_adv = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 8 / 255).clamp(0, 1)
    for name, loss_fn in LOSSES.items():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f_clean = model.backbone.forward_features(x)
            z, logp = model(x)
            codes = model.index_codes(z)
            anchor = (codes + 1) % logp.shape[-1]  # the centre-code losses' anchor: any fixed code per sub-space
            spread = codeword_spread(model.codebooks, codes)  # far's weights; and contrast's, beside any positive
            ref = Reference(z, logp, codes, anchor, spread, spread + 1.0)  # baseline (both as its class spreads are)
            xa = x_adv.clone().requires_grad_(True)
            z_adv, logp_adv = model(xa)
            assert z_adv.dtype == logp_adv.dtype == torch.float32
            (grad,) = torch.autograd.grad(loss_fn(z_adv, logp_adv, ref).sum(), xa)
        zc64, lc64 = head_in_float64(model, f_clean)
        sub = zc64.view(len(zc64), model.M, -1)
        dist = (sub[:, :, None, :] - model.codebooks.double()[None]).pow(2).sum(-1)  # eq. (1) in float64
        # far's weights follow the clean code; at a near-tie the two precisions may pick different codewords,
        # whose distances to the others differ: both sides take the float32 code's, so that only the head differs
        ref64 = Reference(zc64, lc64, dist.argmin(-1), anchor, ref.spread.double(), ref.baseline.double())
        gap = dist.sort(-1).values
        clear = gap[..., 1] - gap[..., 0] > 1e-5  # sub-spaces whose nearest codeword is not a float32 near-tie
        assert clear.float().mean() > 0.95 and torch.equal(ref.codes[clear], ref64.codes[clear])
        xb = x_adv.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            f_adv = model.backbone.forward_features(xb)
        za64, la64 = head_in_float64(model, f_adv)
        loss64 = loss_fn(za64, la64, ref64).sum()
        (grad64,) = torch.autograd.grad(loss64, xb)
        assert float(loss_fn(z_adv, logp_adv, ref).sum().detach()) == pytest.approx(float(loss64.detach()), rel=1e-4), name
        cos = F.cosine_similarity(grad.flatten().double(), grad64.flatten().double(), dim=0)
        assert cos >= 0.999, f"{name} at {bits} bits: gradient cosine {float(cos):.4f}"


@pytest.mark.parametrize("flags,native", [("fpu sse avx2 avx512f avx512_bf16 amx_tile", True),
                                          ("fpu sse avx2 avx512f amx_bf16", True),
                                          ("fpu sse avx2 avx512f avx512_vnni", False)])
def test_auto_precision_is_bf16_only_with_native_bf16(tmp_path: Path, flags: str, native: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert cpu_has_native_bf16(str(cpuinfo)) is native
    import pqattack.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


def test_sdc_table_is_float32_under_bf16_autocast_with_an_exact_zero_diagonal() -> None:
    """The far-code attack's weights (``codeword_spread``) are computed where the backbone's bf16 autocast is
    active. They must be FAISS's SDC table: under autocast the Gram product was bf16 (errors up to 2e-3), and a
    codeword's distance to itself was not 0 (about 1e-3 in bf16, 1e-7 in float32), so far's log weights let the
    clean code back into its sum (log 1e-3 instead of -inf)."""
    from pqattack.attacks.losses import sdc_table
    from pqattack.quant import PQIndex

    g = torch.Generator().manual_seed(5)
    codebooks = F.normalize(torch.randn(4, 64, 32, generator=g), dim=-1) * 0.5
    index = PQIndex(codebooks, torch.randn(300, 128, generator=g))
    codes = torch.randint(0, 64, (20, 4), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        table = sdc_table(codebooks)
        spread = codeword_spread(codebooks, codes)
    assert table.dtype == spread.dtype == torch.float32
    assert torch.allclose(table, index.sdc_table, rtol=0, atol=1e-6)
    assert torch.all(table.diagonal(dim1=1, dim2=2) == 0)
    assert torch.all(spread.gather(-1, codes.unsqueeze(-1)) == 0)


@pytest.mark.parametrize("overrides,changes", [
    (["attack=far"], ("adversarial_queries",)),                              # far's weights
    (["quantizer=pqn", "defense=adv", "defense.attack=far"], ("checkpoint",)),  # trained on far-code images
    (["quantizer=pqn", "defense=adv", "defense.attack=center"], ("checkpoint",)),  # nearest centres by the table
    (["attack=none", "eval.suite=[apd,far]"], ("results",)),                   # a suite member's far set
    (["attack=apd"], ()), (["quantizer=pqn", "defense=adv"], ()), (["quantizer=pqn", "attack=center"], ()),
    (["attack=none", "eval.suite=[apd,aod]"], ()),
])
def test_bf16_artifacts_made_with_the_sdc_table_get_new_keys(tmp_path: Path, overrides: list[str],
                                                              changes: tuple[str, ...],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16, what the float32 SDC table changes (far-code query sets, checkpoints adversarially trained on
    far or centre-code images, and the results of a job that makes any, a suite's included, which ``resume`` would
    otherwise serve) is keyed apart from what the code before made under the same settings (a cache made then is
    not reused); everything else keeps its key, and no float32 key changes."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from pqattack.cache import ArtifactCache
    from pqattack.config import CONF_DIR, load_job
    from pqattack.stages import keys

    from .conftest import TINY

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = [o for o in TINY if not (o.startswith("attack.") and "attack=none" in overrides)]
        cfg = compose(config_name="config", overrides=[*base, *overrides])
    job, cpu = load_job(cfg), torch.device("cpu")
    data = instantiate(cfg.dataset).load(ArtifactCache(tmp_path, enabled=False))
    now = {p: keys.artifact_keys(job, data, p, cpu) for p in ("bf16", "fp32")}
    monkeypatch.setattr(keys, "SDC_TABLE", {})  # the keys before the float32 table
    before = {p: keys.artifact_keys(job, data, p, cpu) for p in ("bf16", "fp32")}
    assert now["fp32"] == before["fp32"]
    differ = {k for k in now["bf16"] if now["bf16"][k] != before["bf16"][k]}
    assert set(changes) <= differ
    if not changes:
        assert not differ
