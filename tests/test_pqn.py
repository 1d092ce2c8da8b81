"""PQN (Yu et al. 2018) as an attack target: the soft layer, its gradients, its index, its training."""

import csv
from pathlib import Path

import pytest
import torch

from pqattack.models import build_backbone
from pqattack.models.pqn import PQNModule, SoftProductQuantizer, asymmetric_triplet_loss
from pqattack.quant import PQIndex

from .conftest import run_job


def test_soft_assignment_tends_to_the_hard_one_as_alpha_grows() -> None:
    torch.manual_seed(0)
    emb, cb = torch.randn(50, 32), torch.randn(4, 16, 8)
    hard = SoftProductQuantizer(cb).hard_codes(emb)
    errors = []
    for alpha in (1.0, 10.0, 100.0, 10_000.0):
        _, s, w = SoftProductQuantizer(cb, alpha)(emb)
        onehot = torch.nn.functional.one_hot(hard, 16).float()
        errors.append((w - onehot).abs().max().item())
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3
    # soft-quantised sub-vector -> the hard codeword
    unit = torch.nn.functional.normalize(cb, dim=-1)
    assert torch.allclose(s, unit[torch.arange(4), hard], atol=1e-3)


def test_gradients_reach_backbone_and_codebooks() -> None:
    torch.manual_seed(0)
    net = build_backbone("smallcnn", 10, width=8)
    module = PQNModule(net, torch.randn(4, 16, 8), loss="triplet+ce", schedule="constant")
    x = torch.rand(16, 3, 32, 32)
    labels = torch.arange(16) % 4
    sub, soft, _ = module.soft_pq(net.forward_features(x))
    loss = asymmetric_triplet_loss(sub, soft, labels, margin=0.5) + module.loss(net.head(soft.flatten(1)), labels)
    loss.backward()
    assert module.soft_pq.codebooks.grad is not None and module.soft_pq.codebooks.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.body.parameters() if p.requires_grad)
    assert net.body[0].weight.grad.abs().sum() > 0


def test_triplet_loss_by_hand() -> None:
    # M = 1, d = 2: anchor 0 (label 0), positive 1 (label 0), negative 2 (label 1)
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    s = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.6, 0.8]]])
    loss = asymmetric_triplet_loss(x, s, torch.tensor([0, 0, 1]), margin=0.5)
    # anchor 0: 0.5 + <x0,s2> - <x0,s1> = 0.5 + 0.6 - 0 = 1.1; anchor 1: 0.5 + 0.8 - 0 = 1.3;
    # anchor 2 has no positive: skipped
    assert abs(loss.item() - (1.1 + 1.3) / 2) < 1e-6


def test_exported_index_ranks_as_the_model_scores() -> None:
    torch.manual_seed(1)
    pq = SoftProductQuantizer(torch.randn(4, 16, 8))
    db_emb, q_emb = torch.randn(500, 32), torch.randn(20, 32)
    sub = lambda e: torch.nn.functional.normalize(e.view(len(e), 4, 8), dim=-1)  # noqa: E731
    index = PQIndex(pq.unit_codebooks().detach(), sub(db_emb).reshape(500, 32))
    # FAISS's L2 encoding with unit codewords = argmax inner product (the model's hard code)
    assert torch.equal(index.db_codes, pq.hard_codes(db_emb))
    # ADC: the model's score sum_m <q_m, c_{m, b_m(x)}>, highest first = FAISS's ADC ranking
    c = pq.unit_codebooks().detach()
    score = torch.einsum("qmd,nmd->qn", sub(q_emb), c[torch.arange(4), index.db_codes])
    _, ids = index.search(sub(q_emb).reshape(20, 32), "adc")
    # the same ranking up to the order of exact ties (database items that share a code)
    assert torch.allclose(score.gather(1, ids), score.sort(1, descending=True).values, atol=1e-5)
    # SDC: sum_m <c_{m, b_m(y)}, c_{m, b_m(x)}>
    qc = pq.hard_codes(q_emb)
    sdc_score = torch.einsum("qmd,nmd->qn", c[torch.arange(4), qc], c[torch.arange(4), index.db_codes])
    dist, ids = index.search(sub(q_emb).reshape(20, 32), "sdc")
    expected = (2 * 4 - 2 * sdc_score).sort(1).values  # ||a - b||^2 = 2 - 2 <a, b> per unit sub-vector
    assert torch.allclose(dist, expected, atol=1e-4)
    # ... and each returned item is at its distance (up to the order of exact ties)
    assert torch.allclose(sdc_score.gather(1, ids), sdc_score.sort(1, descending=True).values, atol=1e-5)


DEMO = ["dataset=synthetic", "model=smallcnn", "trainer.max_epochs=8", "trainer.batch_size=128", "trainer.lr=0.05",
        "device=cpu", "progress=false", "bits=16", "attack=aod"]


@pytest.mark.slow  # trains a backbone for 8 epochs and PQN for 4: about 20 s
def test_short_joint_training_lowers_loss_and_keeps_map(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    km = run_job(DEMO, tmp_path / "km", cache)
    pqn = run_job([*DEMO, "quantizer=pqn", "quantizer.epochs=4"], tmp_path / "pqn", cache)
    assert pqn["meta"]["cache_keys"]["base_checkpoint"] == km["meta"]["cache_keys"]["checkpoint"]
    with open(tmp_path / "pqn" / "csv" / "metrics.csv") as f:
        epochs = [float(r["train/pqn_loss_epoch"]) for r in csv.DictReader(f) if r.get("train/pqn_loss_epoch")]
    assert len(epochs) == 4 and epochs[-1] < epochs[0]
    clean = lambda res, s: next(r["map"] for r in res["rows"] if r["attack"] == "clean" and r["system"] == s)  # noqa
    for s in ("sdc", "adc"):
        assert clean(pqn, s) >= clean(km, s) - 1.0, (clean(pqn, s), clean(km, s))
    rows = {(r["quantizer"], r["attack"], r["system"]) for r in pqn["rows"]}
    assert ("pqn", "aod", "sdc") in rows
    # the report rebuilds the PQN target (its backbone, learned codebooks, sub-normalised features) exactly
    from pqattack.metrics import mean_average_precision
    from pqattack.report.artifacts import ArtifactStore
    from pqattack.report.records import gather_records

    job = gather_records([tmp_path / "pqn"]).jobs[0]
    arts = ArtifactStore(cache).load(job)
    labels = (arts.data.query.labels, arts.data.database.labels)
    for system in ("sdc", "adc"):
        for attack, z in (("clean", arts.clean_query), ("aod", arts.adversarial_query)):
            recorded = next(r["map"] for r in job.rows if (r["system"], r["attack"]) == (system, attack))
            assert mean_average_precision(*arts.index.search(z, system), *labels) == pytest.approx(recorded, abs=1e-3)


def test_pqn_is_attacked_at_its_own_temperature_and_scored_by_the_head_it_trained() -> None:
    """A PQN target's soft assignment is its layer's own, softmax(alpha <x_m, c_mk>): attack.temperature=null
    means 1/alpha (K-means: 1, eq. 7 as printed). Its accuracy comes from the head on the soft-quantised feature
    when the loss trained that head (ce), and is left out for a triplet-only PQN (its head is the pre-PQN one)."""
    from pqattack.models.pqn import SoftProductQuantizer
    from pqattack.config import load_job
    from pqattack.stages.features import classifier_of
    from pqattack.stages.keys import attack_temperature

    from .conftest import compose_config

    def job(overrides: list[str]):  # noqa: ANN202
        return load_job(compose_config(overrides))

    kmeans = job(["model=smallcnn", "quantizer=kmeans"])
    pqn = job(["model=smallcnn", "quantizer=pqn", "quantizer.alpha=20"])
    assert attack_temperature(kmeans) == 1.0 and attack_temperature(pqn) == pytest.approx(1 / 20)
    assert attack_temperature(job(["quantizer=pqn", "attack.temperature=0.5"])) == 0.5
    net = build_backbone("smallcnn", 10, width=8).eval()
    codebooks = torch.nn.functional.normalize(torch.randn(4, 16, 8), dim=-1)
    assert classifier_of(kmeans, net, None) is net.head
    assert classifier_of(pqn, net, codebooks) is None  # quantizer.loss=triplet
    ce = job(["model=smallcnn", "quantizer=pqn", "quantizer.loss=triplet+ce", "quantizer.alpha=20"])
    classify = classifier_of(ce, net, codebooks)
    f = torch.randn(5, 32)
    expected = net.head(SoftProductQuantizer(codebooks, 20)(f)[1].flatten(1))
    assert torch.allclose(classify(f), expected)
