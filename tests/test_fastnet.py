"""fastnet, its recipe's options in the training module, and presets whose recipe follows the model."""

from __future__ import annotations

import importlib

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from pqattack.cache import ArtifactCache
from pqattack.config import ConfigError, container, load_job, validate
from pqattack.data import RetrievalData, SyntheticSource, top1_hit
from pqattack.models import ClassifierModule, build_backbone
from pqattack.models.recipe import RECIPE_OPTIONS
from pqattack.models.fastnet import STEM_KERNEL, FastNet
from pqattack.runtime import Runtime
from pqattack.stages.keys import checkpoint_spec
from pqattack.transfer import source_jobs

from .conftest import CONF

training = importlib.import_module("pqattack.training.fit")  # the module; pqattack.training.fit is its function


def make(overrides: list[str]):  # noqa: ANN201
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def synthetic(num_train: int, tmp_path) -> RetrievalData:  # noqa: ANN001
    return SyntheticSource(num_train=num_train, num_test=1200, num_queries=200, num_database=1000).load(
        ArtifactCache(tmp_path, enabled=False))


def runtime(tmp_path) -> Runtime:  # noqa: ANN001
    return Runtime(torch.device("cpu"), "fp32", ArtifactCache(tmp_path, enabled=False), progress=False)


class LearningRates(pl.Callback):
    """The learning rate of every parameter group at every step."""

    def __init__(self) -> None:
        self.trace: list[list[float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        self.trace.append([g["lr"] for g in trainer.optimizers[0].param_groups])


@torch.no_grad()
def accuracy(net: nn.Module, data: RetrievalData) -> float:
    net.eval()
    images = torch.cat([data.query.images, data.database.images]).float() / 255
    labels = torch.cat([data.query.labels, data.database.labels])
    return top1_hit(net(images), labels).float().mean().item()


def test_fastnet_learns_the_synthetic_set_with_its_recipe(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """200 steps of fastnet's recipe (conf/trainer/fastnet.yaml; batch 64, lr scaled with it) through
    the real Lightning trainer: the stem whitens, the schedule is the triangle, and the network learns."""
    data = synthetic(3200, tmp_path)
    tcfg = container(make(["model=fastnet", "trainer=fastnet"]).trainer)
    batch, epochs = 64, 4
    tcfg.update(batch_size=batch, max_epochs=epochs, lr=tcfg["lr"] * batch / 1024)
    pl.seed_everything(0, verbose=False)
    net = FastNet(data.num_classes, widths=(16, 64, 64)).to(memory_format=torch.channels_last)
    module = ClassifierModule(net, **training.optimiser_kwargs(tcfg))
    rates = LearningRates()
    monkeypatch.setattr(training, "BatchCounter", lambda: rates)
    stats = training.fit(module, data, batch, epochs, 0, runtime(tmp_path), [], tcfg)
    steps = epochs * (len(data.train) // batch)
    assert len(rates.trace) == steps and stats["train_seconds"] > 0

    # learns: chance is 10 %
    assert accuracy(net, data) > 0.7

    # the stem was set from the training images when training started: its first half decorrelates their
    # normalised 2x2 patches (covariance diagonal, each direction scaled to variance lambda / (lambda + eps))
    x = net.normalize(data.train.images.float() / 255)
    patches = x.unfold(2, STEM_KERNEL, 1).unfold(3, STEM_KERNEL, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    w = net.stem.weight.detach().double().reshape(24, 12)
    assert torch.equal(w[:12], -w[12:])
    white = patches @ w[:12].T
    cov = white.T @ white / len(white)
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 1e-4
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)
    assert torch.allclose(cov.diagonal(), eigenvalues / (eigenvalues + net.whiten_eps), atol=1e-4)

    # the triangle: lr_start * lr at the first step, lr at `warmup` of the steps, lr_end * lr at the end; the
    # batch-norm group at norm_lr_scale times the others
    first = [r[0] for r in rates.trace]
    peak = round(tcfg["warmup"] * steps)
    assert first[0] == pytest.approx(tcfg["lr_start"] * tcfg["lr"])
    assert max(first) == pytest.approx(tcfg["lr"]) and first.index(max(first)) == peak
    assert first[-1] == pytest.approx(tcfg["lr"] * (tcfg["lr_end"] + (1 - tcfg["lr_end"]) / (steps - peak)))
    assert all(r[1] == pytest.approx(tcfg["norm_lr_scale"] * r[0]) for r in rates.trace)


class ClassifierBefore(ClassifierModule):
    """The training step and optimiser as they were before the fast recipes' options."""

    def on_train_start(self) -> None:
        """No data-dependent initialisation: the hook did not exist."""

    def on_train_batch_end(self, *args: object) -> None:
        """No lookahead pull."""

    def on_train_epoch_end(self) -> None:
        """No lookahead reset."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        x = self.to_float(images)
        b, _, h, w = x.shape
        padding = self.hparams.crop_padding
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        oy = torch.randint(0, 2 * padding + 1, (b,))
        ox = torch.randint(0, 2 * padding + 1, (b,))
        rows = (oy[:, None] + torch.arange(h))[:, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, :]
        mirror = torch.rand(b) < 0.5
        cols = torch.where(mirror[:, None, None], cols.flip(-1), cols)
        x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols]
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        return self.loss(self.backbone(x), labels)

    def configure_optimizers(self):  # noqa: ANN201
        hp = self.hparams
        opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                              nesterov=hp.nesterov and hp.momentum > 0)
        steps = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=max(steps, 10), pct_start=0.25,
                                                    anneal_strategy="linear")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_recipe_options_at_their_defaults_leave_the_existing_training_bit_identical(tmp_path) -> None:  # noqa: ANN001
    """The recipes that predate the options (trainer=default, table1_cpu's) have none of their keys; training
    with them gives bitwise the weights of the code before the options existed."""
    data = synthetic(640, tmp_path)
    for preset in (["trainer=default"], ["experiment=table1_cpu"]):
        tcfg = container(make(preset).trainer)
        assert not set(tcfg) & set(RECIPE_OPTIONS)
        weights = []
        for module_class in (ClassifierModule, ClassifierBefore):
            pl.seed_everything(0, verbose=False)
            net = build_backbone("smallcnn", data.num_classes, width=8).to(memory_format=torch.channels_last)
            training.fit(module_class(net, **training.optimiser_kwargs(tcfg)), data, 64, 2, 0, runtime(tmp_path),
                         [], tcfg)
            weights.append(net.state_dict())
        now, before = weights
        assert now.keys() == before.keys()
        assert all(torch.equal(now[k], before[k]) for k in now), preset


def test_lookahead_pulls_the_weights_to_the_slow_copy() -> None:
    net = build_backbone("smallcnn", 10, width=4)
    module = ClassifierModule(net, lookahead=0.9)
    module.pull_to_slow_weights(0.0)  # the slow copy starts as the weights
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    module.pull_to_slow_weights(0.75)  # slow <- slow + 0.25 (weights - slow); weights <- slow
    for k, p in net.named_parameters():
        assert torch.allclose(p, start[f"{k}"] + 0.25), k
        assert torch.equal(p, module.slow[k])


def test_recipe_follows_the_model_in_table4_fast_cpu(tmp_path) -> None:  # noqa: ANN001
    """Target and transfer source each train with their own recipe; VGG16 and ResNet18 with table1_cpu's, so
    their checkpoints are table1_cpu's, and fastnet with table1_fast_cpu's."""
    data = synthetic(64, tmp_path)
    cpu = torch.device("cpu")

    def checkpoint(cfg) -> dict:  # noqa: ANN001
        return checkpoint_spec(load_job(cfg), data, "bf16", cpu)

    for model in ("vgg16", "resnet18"):
        preset = make(["experiment=table4_fast_cpu", f"model={model}", "transfer.source_model=fastnet"])
        validate(preset)
        assert checkpoint(preset) == checkpoint(make(["experiment=table1_cpu", f"model={model}"]))
        source = source_jobs(load_job(preset))[0]
        assert source.model["name"] == "fastnet"
        assert checkpoint_spec(source, data, "bf16", cpu) == checkpoint(make(["experiment=table1_fast_cpu"]))
    fast = make(["experiment=table4_fast_cpu", "model=fastnet_narrow", "transfer.source_model=vgg16"])
    assert container(fast.trainer) == container(make(["trainer=fastnet"]).trainer)
    assert source_jobs(load_job(fast))[0].trainer == container(make(["experiment=table1_cpu"]).trainer)
    # a recipe override reaches only its model
    tuned = make(["experiment=table4_fast_cpu", "model=fastnet", "recipes.vgg16.max_epochs=3",
                  "transfer.source_model=vgg16"])
    assert tuned.trainer.max_epochs == 20 and source_jobs(load_job(tuned))[0].trainer["max_epochs"] == 3


def test_tables_train_fastnet_with_its_recipe_and_the_sweeps_with_its_10_epoch_version() -> None:
    """trainer=fastnet_10ep is fastnet's recipe with 10 of its 20 epochs and nothing else changed; the paper-regime
    tables use the full recipe, the sweeps that attack or fine-tune one checkpoint many times the 10-epoch one, for
    the target and for a transfer source alike."""
    full, short = container(make(["trainer=fastnet"]).trainer), container(make(["trainer=fastnet_10ep"]).trainer)
    assert (full["max_epochs"], short["max_epochs"]) == (20, 10) and {**short, "max_epochs": 20} == full
    for preset in ("table1_fast_cpu", "soft_assignment_fast_cpu", "table4_fast_cpu"):
        assert container(make([f"experiment={preset}", "model=fastnet"]).trainer) == full, preset
    for preset in ("beyond_cpu", "budget_cpu", "defense_cpu", "defense_kmeans_cpu", "defense_budget_cpu",
                   "defense_pareto_cpu", "transfer_boost_cpu"):
        assert container(make([f"experiment={preset}", "model=fastnet"]).trainer) == short, preset
    for model in ("fastnet", "fastnet_narrow"):
        boost = make(["experiment=transfer_boost_cpu", "model=vgg16", f"transfer.source_model={model}"])
        assert source_jobs(load_job(boost))[0].trainer == short, model
        table4 = make(["experiment=table4_fast_cpu", "model=vgg16", f"transfer.source_model={model}"])
        assert source_jobs(load_job(table4))[0].trainer == full, model


def test_an_ensemble_source_trains_each_member_with_its_own_recipe(tmp_path) -> None:  # noqa: ANN001
    """``transfer.source_model=[a,b]`` in a preset with ``recipes``: each member needs a recipe and gets its own (an
    ensemble once stopped at start-up with "no recipe for ['a', 'b']")."""
    data = synthetic(64, tmp_path)
    cpu = torch.device("cpu")
    preset = make(["experiment=table4_fast_cpu", "model=fastnet", "transfer.source_model=[fastnet_narrow,vgg16]"])
    validate(preset)
    narrow, vgg = source_jobs(load_job(preset))
    assert (narrow.model["name"], narrow.trainer["max_epochs"], vgg.model["name"]) == ("fastnet_narrow", 20, "vgg16")
    assert checkpoint_spec(vgg, data, "bf16", cpu) == checkpoint_spec(
        load_job(make(["experiment=table1_cpu", "model=vgg16"])), data, "bf16", cpu)
    with pytest.raises(ConfigError, match=r"transfer\.source_model=\[fastnet_narrow, alexnet\].*'alexnet'"):
        validate(make(["experiment=table4_fast_cpu", "transfer.source_model=[fastnet_narrow,alexnet]"]))


@pytest.mark.parametrize("overrides,key", [
    (["experiment=table4_fast_cpu", "model=vgg11"], "model=vgg11"),
    (["experiment=table4_fast_cpu", "transfer.source_model=alexnet"], "transfer.source_model=alexnet"),
    (["experiment=table4_fast_cpu", "+recipes.vgg16.lookahead=1"], "recipes.vgg16.lookahead"),
    (["trainer.schedule=cosine"], "trainer.schedule"),
    (["trainer=fastnet", "trainer.warmup=1"], "trainer.warmup"),
    (["trainer=fastnet", "trainer.lr_end=-0.1"], "trainer.lr_end"),
    (["trainer=fastnet", "trainer.norm_lr_scale=0"], "trainer.norm_lr_scale"),
    (["trainer=fastnet", "trainer.lookahead_every=0"], "trainer.lookahead_every"),
    (["trainer=fastnet", "trainer.crop_pad_mode=wrap"], "trainer.crop_pad_mode"),
    (["trainer=fastnet", "trainer.crop_padding=32"], "trainer.crop_padding"),
])
def test_bad_recipes_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(make(overrides))


def test_recipes_resolve_in_the_composed_job() -> None:
    cfg = make(["experiment=table4_fast_cpu", "model=resnet18"])
    assert OmegaConf.is_interpolation(cfg, "trainer")
    assert container(cfg)["trainer"]["max_epochs"] == 2


@pytest.mark.parametrize(("epochs_key", "advice"), [
    ("trainer.max_epochs", "Use a GPU, a CPU preset (experiment=table1_fast_cpu, experiment=table1_cpu) or fewer "
                           "trainer.max_epochs;"),
    ("defense.epochs", "Use a GPU or fewer defense.epochs;")])
def test_a_long_training_names_the_key_that_shortens_it(tmp_path, monkeypatch, caplog, epochs_key: str,
                                                       advice: str) -> None:  # noqa: ANN001
    """The estimate of a long training says how to shorten it: an adversarial fine-tuning (or PQN's) by its own
    epochs key (it once pointed every training at trainer.max_epochs and a CPU preset, also inside one)."""
    data = synthetic(640, tmp_path)
    monkeypatch.setattr(training.TimeEstimate, "threshold_s", 0.0)  # every training is "long"
    tcfg = container(make([]).trainer)
    module = ClassifierModule(build_backbone("smallcnn", data.num_classes), **training.optimiser_kwargs(tcfg))
    rt = Runtime(torch.device("cpu"), "fp32", ArtifactCache(tmp_path, enabled=False), progress=True)
    with caplog.at_level("WARNING", logger="pqattack.training.fit"):
        training.fit(module, data, 64, 1, 0, rt, [], tcfg, "a fine-tuning, 1 epoch", epochs_key)
    (message,) = [r.getMessage() for r in caplog.records if "progress=false hides this" in r.getMessage()]
    assert message.startswith("a fine-tuning, 1 epoch on this CPU: about ") and advice in message


@pytest.mark.parametrize("progress,shown", [("auto", True), ("true", True), ("false", False)])
def test_the_estimate_of_a_long_training_reaches_a_log_unless_progress_is_false(tmp_path, monkeypatch, caplog,
                                                                                progress: str, shown: bool) -> None:  # noqa: ANN001
    """``progress=auto`` draws no bars where stderr is no terminal (here: captured), but a log still gets the
    estimate before a long training; only ``progress=false`` hides it."""
    from .conftest import TINY, run_job

    monkeypatch.setattr(training.TimeEstimate, "threshold_s", 0.0)  # every training is "long"
    with caplog.at_level("WARNING", logger="pqattack.training.fit"):
        run_job([o for o in TINY if not o.startswith("progress=")] + [f"progress={progress}", "attack=basic"],
                tmp_path / "out", tmp_path / "cache")
    assert any("progress=false hides this" in r.getMessage() for r in caplog.records) is shown


def test_the_bn_neck_standardises_the_embedding_and_changes_only_its_own_key(tmp_path) -> None:  # noqa: ANN001
    """model=fastnet_bn: a batch norm without affine after the pool, whose output is the embedding (per dimension
    zero mean and unit variance over a training batch); plain fastnet's key is as before the option existed."""
    torch.manual_seed(0)
    net = build_backbone("fastnet", 10, neck="bn").train()
    assert isinstance(net.body[-1], nn.BatchNorm1d) and not net.body[-1].affine
    z = net.forward_features(torch.rand(64, 3, 32, 32))
    assert torch.allclose(z.mean(0), torch.zeros(256), atol=1e-4)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(256), atol=1e-2)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in build_backbone("fastnet", 10).modules())
    data, cpu = synthetic(100, tmp_path), torch.device("cpu")
    spec = {name: checkpoint_spec(load_job(make(["experiment=table1_fast_cpu", f"model={name}"])), data, "bf16", cpu)
            for name in ("fastnet", "fastnet_bn")}
    assert "neck" not in spec["fastnet"]["model"] and spec["fastnet_bn"]["model"]["neck"] == "bn"


def test_the_centre_neck_subtracts_the_batch_mean_in_training_and_the_running_mean_in_eval() -> None:
    torch.manual_seed(0)
    net = build_backbone("fastnet", 10, neck="centre").train()
    x = torch.rand(32, 3, 32, 32)
    seen = []
    net.body[-2].register_forward_hook(lambda m, i, out: seen.append(out))  # the pooled output, the neck's input
    with torch.no_grad():
        z = net.forward_features(x)
        pooled = seen[0]
        assert torch.allclose(z, pooled - pooled.mean(0), atol=1e-6)
        assert torch.allclose(net.body[-1].running_mean, 0.1 * pooled.mean(0), atol=1e-6)
        net.eval()
        z_eval = net.forward_features(x)
        assert torch.allclose(z_eval, seen[1] - 0.1 * pooled.mean(0), atol=1e-6)  # eval: the blocks' BN changes too


@pytest.mark.parametrize("overrides", [["model=vgg16", "+model.neck=bn"], ["model=fastnet", "model.neck=ln"]])
def test_a_bad_neck_names_the_key(overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"model\.neck="):
        validate(make(overrides))


def test_the_whitening_stem_is_computed_on_the_cpu_wherever_the_module_is() -> None:
    """``init_from_images`` runs at the start of training, after Lightning has moved the module to its device: the
    normalisation must not mix the module's buffers (there) with the CPU batch (it raised on CUDA). The meta device
    stands in for a GPU here, where it only shows that nothing raises (tests/test_gpu.py trains fastnet on a GPU and
    compares its stem with the CPU's); on the CPU the stem is set from the images, the same for the same images."""
    images = torch.randint(0, 256, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    first, second = build_backbone("fastnet", 10), build_backbone("fastnet", 10)  # two random initialisations
    assert not torch.equal(first.stem.weight, second.stem.weight)
    first.init_from_images(images)
    second.init_from_images(images)
    assert torch.equal(first.stem.weight, second.stem.weight)
    elsewhere = build_backbone("fastnet", 10).to("meta")
    elsewhere.init_from_images(images)  # raised "Expected all tensors to be on the same device"
    assert elsewhere.stem.weight.device.type == "meta"
