"""Start-up checks: bad input fails here, before any compute, with the key, the value and what is allowed."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .attacks.losses import PEAKS
from .models.backbones import ARCHITECTURES
from .models.retrieval import SIMILARITIES

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
TEST_SPLIT_SIZE = {"cifar10": 10_000}


class ConfigError(ValueError):
    """A config value that is not allowed; the message names the key."""


def _pq_k(bits: int | None, M: int, default: int) -> int:  # noqa: N803
    """``quantizer.K`` from the top-level ``bits``: K = 2^(bits / M)."""
    if bits is None:
        return default
    if int(bits) < 1 or int(bits) % int(M):
        raise ConfigError(f"bits={bits}: must be a positive multiple of quantizer.M={M} (bits = M * log2(K))")
    return 2 ** (int(bits) // int(M))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pq_k"):
        OmegaConf.register_new_resolver("pq_k", _pq_k)


register_resolvers()


def validate(cfg: DictConfig) -> None:
    q, a, d = cfg.quantizer, cfg.attack, cfg.dataset
    if q.M < 1:
        raise ConfigError(f"quantizer.M={q.M}: must be >= 1")
    if q.K < 2 or 2 ** round(math.log2(q.K)) != q.K or q.K > 2 ** 16:
        raise ConfigError(f"quantizer.K={q.K}: must be a power of two in [2, 65536]")
    bits = q.M * round(math.log2(q.K))
    if cfg.get("bits") is not None and int(cfg.bits) != bits:
        raise ConfigError(f"bits={cfg.bits} but quantizer.M * log2(quantizer.K) = {q.M} * "
                          f"{round(math.log2(q.K))} = {bits}; give consistent values, or bits=null")
    if d.get("num_database") is not None and q.K > d.num_database:
        raise ConfigError(f"quantizer.K={q.K} is larger than dataset.num_database={d.num_database}: K-means "
                          f"needs at least K database vectors")
    if q.kind not in ("kmeans", "pqn"):
        raise ConfigError(f"quantizer.kind={q.kind!r}: expected kmeans or pqn")
    if q.kind == "pqn":
        from .models.pqn import PQN_LOSSES

        if q.alpha <= 0:
            raise ConfigError(f"quantizer.alpha={q.alpha}: must be > 0")
        if q.loss not in PQN_LOSSES:
            raise ConfigError(f"quantizer.loss={q.loss!r}: expected one of {', '.join(PQN_LOSSES)}")
        if q.epochs < 1 or q.lr <= 0:
            raise ConfigError(f"quantizer.epochs={q.epochs}, quantizer.lr={q.lr}: must be >= 1 and > 0")
        if q.K > q.init_samples:
            raise ConfigError(f"quantizer.K={q.K} is larger than quantizer.init_samples={q.init_samples}")
    if cfg.model.arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch={cfg.model.arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    if a.name != "none":
        if not 0 < a.eps <= 1:
            raise ConfigError(f"attack.eps={a.eps}: must be in (0, 1] (pixel scale; the paper's is 8/255)")
        if a.step <= 0:
            raise ConfigError(f"attack.step={a.step}: must be > 0")
        if a.iters < 1:
            raise ConfigError(f"attack.iters={a.iters}: must be >= 1")
        if a.similarity not in SIMILARITIES:
            raise ConfigError(f"attack.similarity={a.similarity!r}: expected one of {', '.join(SIMILARITIES)}")
        if a.get("temperature") is not None and a.temperature <= 0:
            raise ConfigError(f"attack.temperature={a.temperature}: must be > 0, or null (the target's own)")
        if a.get("peak", "index") not in PEAKS:
            raise ConfigError(f"attack.peak={a.peak!r}: expected one of {', '.join(PEAKS)}")
        if a.batch_size < 1:
            raise ConfigError(f"attack.batch_size={a.batch_size}: must be >= 1")
    if cfg.system not in ("sdc", "adc", "both"):
        raise ConfigError(f"system={cfg.system!r}: expected sdc, adc or both")
    ix = cfg.get("index") or {"kind": "flat"}
    if ix.get("kind") not in ("flat", "ivfpq"):
        raise ConfigError(f"index.kind={ix.get('kind')!r}: expected flat or ivfpq")
    if ix["kind"] == "ivfpq":
        if cfg.system != "adc":
            raise ConfigError(f"system={cfg.system}: index=ivfpq searches with ADC only; set system=adc")
        if cfg.eval.topk is None:
            raise ConfigError("eval.topk=null: index=ivfpq ranks only the top k; set eval.topk (e.g. 5000)")
        if not 1 <= ix.nprobe <= ix.nlist:
            raise ConfigError(f"index.nprobe={ix.nprobe}: must be in [1, index.nlist={ix.nlist}]")
        if d.get("num_database") is not None and ix.nlist > d.num_database:
            raise ConfigError(f"index.nlist={ix.nlist} is larger than dataset.num_database={d.num_database}")
    if cfg.eval.topk is not None and cfg.eval.topk < 1:
        raise ConfigError(f"eval.topk={cfg.eval.topk}: must be >= 1 or null (full ranking)")
    test_size = TEST_SPLIT_SIZE.get(d.name, d.get("num_test"))
    if d.num_queries < 1 or (d.get("num_database") is not None and d.num_database < 1):
        raise ConfigError(f"dataset.num_queries={d.num_queries}, dataset.num_database={d.num_database}: "
                          f"must both be >= 1 (num_database may be null where the dataset allows it)")
    if d.get("num_database") is None and d.name in ("cifar10", "synthetic"):
        raise ConfigError(f"dataset.num_database=null: dataset={d.name} needs a number")
    if test_size is not None and d.num_queries + d.num_database > test_size:
        raise ConfigError(f"dataset.num_queries + dataset.num_database = {d.num_queries} + {d.num_database} "
                          f"exceeds the {test_size} test images of dataset={d.name}")
    if cfg.trainer.max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs={cfg.trainer.max_epochs}: must be >= 1")
    if cfg.trainer.batch_size < 2:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size}: must be >= 2 (batch norm)")
    tr = cfg.trainer
    if not isinstance(tr.get("compile", False), bool):
        raise ConfigError(f"trainer.compile={tr.compile!r}: expected true or false")
    if int(tr.get("num_nodes", 1)) != 1:
        raise ConfigError(f"trainer.num_nodes={tr.num_nodes}: a job trains on one node only (its other stages run "
                          f"in one process); use trainer.devices for the GPUs of that node, or a SLURM array of jobs")
    if tr.get("strategy") in ("ddp", "ddp_find_unused_parameters_true") and tr.get("devices", 1) not in (1, [0]):
        raise ConfigError(f"trainer.strategy={tr.strategy} with trainer.devices={tr.devices}: Lightning would start the "
                          f"other ranks by re-running this command line, i.e. the whole job; use trainer=ddp "
                          f"(a spawn-based strategy)")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision={cfg.precision!r}: expected auto, fp32 or bf16")
    t = cfg.get("transfer") or {}
    if t.get("source") and (t.get("source_model") or t.get("source_bits")):
        raise ConfigError("transfer.source (a saved set) and transfer.source_model / transfer.source_bits (make "
                          "the set now) exclude each other; give one")
    if t.get("source_model") is not None and not (CONF_DIR / "model" / f"{t.source_model}.yaml").is_file():
        options = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise ConfigError(f"transfer.source_model={t.source_model!r}: expected one of {', '.join(options)}")
    if t.get("source_bits") is not None and (int(t.source_bits) < 1 or int(t.source_bits) % q.M):
        raise ConfigError(f"transfer.source_bits={t.source_bits}: must be a positive multiple of quantizer.M={q.M}")
    dev = str(cfg.device)
    if not (dev in ("auto", "cpu") or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"device={dev!r}: expected auto, cpu, cuda or cuda:N")
    if dev.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(dev[5:]) if dev.startswith("cuda:") else 0
        if index >= count:
            raise ConfigError(f"device={dev!r}: this machine has {count} CUDA device(s); use auto or cpu"
                              + (f" or cuda:0..cuda:{count - 1}" if count else ""))
