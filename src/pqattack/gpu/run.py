"""The staged run on one GPU machine (``tools/gpu-run``, ``make gpu``): paper scale in one shot of a few minutes.

    tools/gpu-run [--out DIR] [--deadline 540] [--previous records.tar.gz] [--stages smoke,table1,...]
    tools/gpu-run --tiny --out DIR      # the same stages at toy size on a CPU (the test of this script)

Stages, in this order, under one deadline: ``smoke`` (the ``gpu`` tests, a small CIFAR-10 job with the three
attacks, PQN and transfer; a failure stops the run), ``table1``, ``table2``, ``table3``, ``bench``, ``table4``,
``beyond``, ``defense`` (``python -m pqattack experiment=tableN|beyond|defense``, ``python -m pqattack.bench``) and,
with what time is left, ``bench_compile``. Every command runs in its own process with the time left as its timeout. Before a stage starts,
its cost is estimated from the throughputs the smoke stage (and later ``table1``) measured; a stage (or one of its
commands) that cannot finish before the deadline is skipped, with the reason in the log.

Outputs: ``<work>/stages/<stage>/`` holds each stage's sweep folders, command logs and ``status.json``. When a
stage ends, every finished stage's records (results.json, results.md, Hydra's and Lightning's small files, the bench
JSON, logs; never images or tensors) are packed into ``<out>/records.tar.gz``; ``<out>/gpu-run.log`` is this
script's log, appended line by line; ``<out>/checkpoints/`` gets Table 1's backbones (fp16, in parts, for
``python -m pqattack.cache import``). ``<out>`` keeps within what one device call brings back (``OUT_LIMITS``), so
a run stopped at any point still returns everything finished. ``tools/gpu-render`` turns the records into
``results/table{1..4}.md|json``, ``results/beyond.md|json``, ``results/defense.md|json`` and the GPU section of docs/benchmarks.md.

Running it again skips the stages whose records are present and valid (in ``<work>``, or in ``--previous``, a
records.tar.gz from an earlier run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .outbox import NOT_RECORDS, RECORD_SUFFIXES, out_fits
from .plan import Costs, Mode, Plan, job_records, measure_costs, refine_costs

REPO = Path(__file__).resolve().parents[3]
STAGES = ("smoke", "table1", "table2", "table3", "bench", "table4", "beyond", "defense", "bench_compile")
#: per (model, bits) cell of the beyond stage: its jobs (experiment=beyond's 10 attacks) and the query sets it makes
#: besides Table 1's (margin, center, center_targeted, far and contrast one each, margin with 4 restarts four, margin
#: with MI one)
BEYOND_JOBS_PER_CELL = 10
BEYOND_SETS_PER_CELL = 10
#: per (bits, defense) cell of the defense stage: its suite's attack sets in units of one 5-step attack (basic, APD,
#: AOD, margin, centre and far one each, 100-step APD twenty, APD with 4 restarts four; EOT=4 four more for the random
#: JPEG, the two 16-draw members 32 more for bit depth; the oblivious members reuse the undefended sets), and the
#: epochs one adversarial training costs in clean epochs for its k = 2 PGD steps (k + 1.3)
DEFENSES = ("none", "adv", "adv_eps2", "jpeg", "jpeg_random", "bitdepth")
DEFENSE_ATTACK_UNITS = {"none": 30, "adv": 30, "adv_eps2": 30, "jpeg": 30, "jpeg_random": 34, "bitdepth": 62}
ADV_EPOCH_FACTOR = 3.3
REQUIRED = ("smoke",)  # a failure here stops the run
PACK_RESERVE_S = 15.0  # kept back from every command's timeout: packing the records, moving the checkpoints
EXPORT_PART_MB = 15.5  # checkpoint parts, under the 16 MiB a file may have in <out>
EXPORT_MIN_S = 60.0  # time left below which Table 1's backbones are not exported (torch import and ~60 MiB of fp16)


# --------------------------------------------------------------------------------------------- stages
@dataclass
class Command:
    name: str                 # its folder (sweep dir) and log name inside the stage folder
    argv: list[str]           # run as ``python <argv>``
    jobs: int = 0             # records (results.json) it must leave; 0: not a pqattack sweep
    plan: Plan = field(default_factory=Plan)


@dataclass
class Stage:
    name: str
    commands: list[Command]


class Run:
    """One run of the staged script: its folders, deadline, log and records."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.mode = Mode.make(args.tiny)
        self.work = Path(args.work).resolve()
        self.out = Path(args.out or os.environ.get("OUT") or self.work / "out").resolve()
        self.stages_dir = self.work / "stages"
        self.cache = self.work / "cache"
        self.smoke_cache = self.work / "cache-smoke"
        self.started = float(args.started) if args.started else time.time()
        self.deadline = self.started + args.deadline
        self.wanted = args.stages.split(",") if args.stages else list(STAGES)
        unknown = [s for s in self.wanted if s not in STAGES]
        if unknown:
            raise SystemExit(f"--stages: unknown {unknown}; choose from {', '.join(STAGES)}")
        self.previous = Path(args.previous) if args.previous else None
        self.costs: Costs | None = None
        self.child: subprocess.Popen | None = None  # the command running now, and its stage (``interrupted``)
        self.running: str | None = None
        for d in (self.work, self.out, self.stages_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.log_files = [self.work / "gpu-run.log", self.out / "gpu-run.log"]

    # ----------------------------------------------------------------------------------------- log and time
    def left(self) -> float:
        return self.deadline - time.time()

    def log(self, msg: str) -> None:
        line = f"[{time.time() - self.started:7.1f}s] {msg}"
        print(line, flush=True)
        for f in self.log_files:
            with open(f, "a") as fh:
                fh.write(line + "\n")

    # ----------------------------------------------------------------------------------------- stage definitions
    def overrides(self, cache: Path, smoke: bool = False) -> list[str]:
        extra = [o for o in self.mode.extra if not (smoke and o.startswith("trainer.max_epochs="))]
        return [*self.mode.data, f"device={self.mode.device}", "progress=false", "resume=true", f"cache.dir={cache}",
                *extra]

    def sweep(self, stage: str, name: str, experiment: str, extra: list[str], jobs: int, plan: Plan,
              cache: Path | None = None, drop_attack: bool = False) -> Command:
        """``drop_attack``: leave the mode's ``attack.*`` overrides out (a preset with attack=none, whose suite
        members take their own settings)."""
        common = [o for o in self.overrides(cache or self.cache, stage == "smoke")
                  if not (drop_attack and o.startswith("attack."))]
        argv = ["-m", "pqattack", f"experiment={experiment}", *common, *extra,
                f"hydra.sweep.dir={self.stages_dir / stage / name}"]
        return Command(name, argv, jobs, plan)

    def trained(self, arch: str, epochs: int) -> bool:
        """Whether a cross-entropy backbone of ``arch`` trained ``epochs`` epochs is in this run's cache (from the
        records of the stages run so far)."""
        for job in job_records(self.stages_dir):
            cfg = job["meta"]["config"]
            key = job["meta"]["cache_keys"].get("base_checkpoint") or job["meta"]["cache_keys"].get("checkpoint")
            if (cfg["model"]["arch"], cfg["trainer"]["max_epochs"]) == (arch, epochs) and \
                    Path(cfg["cache"]["dir"]).resolve() == self.cache and (self.cache / "checkpoint" / key).is_dir():
                return True
        return False

    def epochs(self, preset: str) -> int:
        if self.mode.tiny:
            return 1
        from omegaconf import OmegaConf

        from ..config import CONF_DIR

        cfg = OmegaConf.load(CONF_DIR / "experiment" / f"{preset}.yaml")
        return int(OmegaConf.select(cfg, "trainer.max_epochs", default=None) or OmegaConf.load(
            CONF_DIR / "trainer" / "default.yaml").max_epochs)

    def stage(self, name: str) -> Stage:
        m = self.mode
        bits = [int(b) for b in m.bits.split(",")]
        ks = [2 ** (b // 4) for b in bits]
        n = m.train_images

        def untrained(models: str, epochs: int) -> list[tuple[str, int, int]]:
            return [(a, epochs, n) for a in models.split(",") if not self.trained(a, epochs)]

        if name == "smoke":
            tests = Command("gpu-tests", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                                         str(REPO / "tests" / "test_gpu.py"),
                                         f"--junitxml={self.stages_dir / 'smoke' / 'gpu-tests.xml'}"])
            tiny = ["model=smallcnn"] if m.tiny else []  # 2 epochs (the preset's): the second is the steady rate
            attacks = self.sweep("smoke", "attacks", "gpu_smoke", tiny, 3, Plan(), self.smoke_cache)
            pqn = self.sweep("smoke", "pqn-transfer", "gpu_smoke", [*tiny, "quantizer=pqn", "quantizer.epochs=2",
                                                                     "attack=aod", "transfer.source_bits=24"], 1,
                             Plan(), self.smoke_cache)
            return Stage(name, [tests, attacks, pqn])
        if name == "table1":
            e = self.epochs("table1")
            models = m.base_models.split(",")
            plan = Plan(train=untrained(m.base_models, e), jobs=len(models) * len(bits) * 3,
                        attacks=[(a, m.queries) for a in models for _ in range(1 + 2 * len(bits))],
                        codebooks=[k for _ in models for k in ks], decode=not (self.cache / "images").is_dir())
            return Stage(name, [self.sweep(name, "sweep", "table1", [f"model={m.base_models}", f"bits={m.bits}"],
                                           plan.jobs, plan)])
        if name == "table2":
            e, pe = self.epochs("table1"), self.pqn_epochs()
            models = m.base_models.split(",")
            done = self.valid("table1")
            jobs = len(models) * len(bits) * 3
            plan = Plan(train=untrained(m.base_models, e), pqn=[(a, pe, n) for a in models for _ in bits],
                        jobs=jobs if done else 2 * jobs, resumed=jobs if done else 0,
                        attacks=[(a, m.queries) for a in models for _ in range(3 * len(bits))],
                        codebooks=[k for _ in models for k in ks])
            return Stage(name, [self.sweep(name, "sweep", "table2", [f"model={m.base_models}", f"bits={m.bits}"],
                                           2 * jobs, plan)])
        if name == "table3":
            e = self.epochs("table1")
            models = m.transfer_models.split(",")
            fresh = not self.valid("table1")
            plan = Plan(train=untrained(m.transfer_models, e), jobs=len(models) * len(bits) ** 2,
                        attacks=[(a, m.queries) for a in models for _ in bits] if fresh else [],
                        codebooks=[k for _ in models for k in ks] if fresh else [])
            return Stage(name, [self.sweep(name, "sweep", "table3", [
                f"model={m.transfer_models}", f"bits={m.bits}", f"transfer.source_bits={m.bits}"], plan.jobs, plan)])
        if name == "bench":
            # ResNet18's throughputs (the speed targets' backbone); the recipe's training times and Table 1's wall
            # time come from the table1 stage's records (--table1-run, which the bench checks before it starts:
            # only where that stage left its status) instead of training the backbones again
            figures = ["train_resnet18", "attack_resnet18"]
            table1 = self.stages_dir / "table1"
            argv = ["-m", "pqattack.bench", "--device", m.device, "--figures", ",".join(figures),
                    "--out", str(self.stages_dir / name / "bench.json"),
                    *(["--table1-run", str(table1)] if (table1 / "status.json").is_file() else []),
                    *(["--quick"] if m.tiny else [])]
            return Stage(name, [Command("bench", argv, 0, Plan(fixed_s=self.bench_seconds(figures)))])
        if name == "table4":
            e = self.epochs("table4")
            first, every = m.table4_first.split(","), m.table4_all.split(",")
            plan1 = Plan(train=untrained(m.table4_first, e), jobs=len(first) ** 2,
                         attacks=[(a, m.queries) for a in first], codebooks=[ks[0]] * len(first))
            rest = [a for a in every if a not in first]
            plan2 = Plan(train=[(a, e, n) for a in rest], jobs=len(every) ** 2 - len(first) ** 2,
                         resumed=len(first) ** 2, attacks=[(a, m.queries) for a in rest], codebooks=[ks[0]] * len(rest))
            extra = [f"bits={bits[0]}"]
            return Stage(name, [
                self.sweep(name, "first", "table4", [*extra, f"model={m.table4_first}",
                                                     f"transfer.source_model={m.table4_first}"], len(first) ** 2, plan1),
                self.sweep(name, "all", "table4", [*extra, f"model={m.table4_all}",
                                                   f"transfer.source_model={m.table4_all}"], len(every) ** 2, plan2)])
        if name == "beyond":
            e = self.epochs("table1")
            models = m.base_models.split(",")
            fresh = not self.valid("table1")
            sets = BEYOND_SETS_PER_CELL * len(bits) + (1 + 2 * len(bits) if fresh else 0)
            plan = Plan(train=untrained(m.base_models, e), jobs=len(models) * len(bits) * BEYOND_JOBS_PER_CELL,
                        attacks=[(a, m.queries) for a in models for _ in range(sets)],
                        codebooks=[k for _ in models for k in ks] if fresh else [])
            return Stage(name, [self.sweep(name, "sweep", "beyond", [f"model={m.base_models}", f"bits={m.bits}"],
                                           plan.jobs, plan)])
        if name == "defense":
            e, pe = self.epochs("table1"), self.pqn_epochs()
            model = "vgg16" if "vgg16" in m.base_models.split(",") else m.base_models.split(",")[0]
            trained = self.valid("table2")
            dbits = bits[:1] if m.tiny else bits  # at toy size one code length exercises the stage
            adv = [(model, max(1, round(ADV_EPOCH_FACTOR)), n) for _ in dbits for d in DEFENSES if d.startswith("adv")]
            plan = Plan(train=untrained(model, e), pqn=([] if trained else [(model, pe, n) for _ in dbits]) + adv,
                        jobs=len(dbits) * len(DEFENSES),
                        attacks=[(model, m.queries) for _ in dbits for d in DEFENSES
                                 for _ in range(DEFENSE_ATTACK_UNITS[d])])
            extra = [f"model={model}", f"bits={','.join(map(str, dbits))}"]
            return Stage(name, [self.sweep(name, "sweep", "defense", extra, plan.jobs, plan, drop_attack=True)])
        if name == "bench_compile":
            argv = ["-m", "pqattack.bench", "--device", m.device, "--figures", "train_compile",
                    "--out", str(self.stages_dir / name / "bench.json"), *(["--quick"] if m.tiny else [])]
            return Stage(name, [Command("bench", argv, 0, Plan(fixed_s=self.compile_seconds()))])
        raise ValueError(name)

    def pqn_epochs(self) -> int:
        from omegaconf import OmegaConf

        from ..config import CONF_DIR

        return int(OmegaConf.load(CONF_DIR / "quantizer" / "pqn.yaml").epochs)

    def bench_seconds(self, figures: list[str]) -> float:
        """The bench figures: each a process that decodes its images and runs the fast path twice (fp32, bf16) and
        the baseline, a few dozen batches each (bench.workloads.SIZES); estimated from the smoke stage's rates."""
        from ..bench.workloads import SIZES

        c, sz = self.costs, SIZES["quick" if self.mode.tiny else self.mode.device]
        if c is None:
            return 0.0
        s = 0.0
        for f in figures:
            kind, arch = f.split("_", 1)
            if kind == "train":
                steps = sz["train_warmup"] + sz["train_steps"]
                work = steps * (2 * sz["train_batch_fast"] + 4 * sz["train_batch_base"]) * c.per_image(arch)
            else:
                work = sz["attack_batches"] * (2 * sz["attack_batch_fast"] + sz["attack_batch_base"]) * 3 * (
                    c.attack_s_per_query * c.flop(arch) / c.flop(c.reference))
            s += 2 * c.process_s + 3 * c.fit_s + work
        return s

    def compile_seconds(self) -> float:
        """torch.compile of ResNet18's training graph: about a minute on a GPU machine's cores (a guess, not a
        measurement: nothing here compiled before this stage), plus two short fits."""
        return 60.0 + 2 * self.costs.fit_s + 2 * self.costs.process_s if self.costs else 60.0

    # ----------------------------------------------------------------------------------------- records
    def status(self, name: str) -> dict[str, Any] | None:
        path = self.stages_dir / name / "status.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def valid(self, name: str) -> bool:
        """Whether a stage's records are complete: status ok, every sweep's job records present and readable, the
        bench's JSON readable."""
        st = self.status(name)
        if not st or st.get("status") != "ok":
            return False
        folder = self.stages_dir / name
        try:
            for c in st["commands"]:
                if c.get("jobs"):
                    found = job_records(folder / c["name"])
                    if len(found) != c["jobs"] or not all(j.get("rows") for j in found):
                        return False
            if name.startswith("bench"):
                return bool(json.loads((folder / "bench.json").read_text()).get("records"))
        except (OSError, json.JSONDecodeError, KeyError):
            return False
        return True

    def take_previous(self) -> None:
        """Stages recorded valid in ``--previous`` (an earlier run's records.tar.gz or its unpacked folder) and not
        valid here are copied here, so they are skipped."""
        if self.previous is None:
            return
        if not self.previous.exists():
            raise SystemExit(f"--previous {self.previous}: no such file or folder")
        tmp = self.work / "previous"
        shutil.rmtree(tmp, ignore_errors=True)
        if self.previous.is_dir():
            shutil.copytree(self.previous, tmp)
        else:
            with tarfile.open(self.previous) as tar:
                tar.extractall(tmp, filter="data")
        for name in STAGES:
            if (tmp / name / "status.json").is_file() and not self.valid(name):
                shutil.rmtree(self.stages_dir / name, ignore_errors=True)
                shutil.copytree(tmp / name, self.stages_dir / name)
                if not self.valid(name):
                    shutil.rmtree(self.stages_dir / name, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    def record_files(self) -> list[tuple[Path, str]]:
        """(file, name in the archive) for every finished stage's records, the run's summary and environment."""
        out = []
        for f in ("run.json", "environment.json", "gpu-run.log"):
            if (self.work / f).is_file():
                out.append((self.work / f, f))
        for name in STAGES:
            folder = self.stages_dir / name
            if not (folder / "status.json").is_file():
                continue
            for path in sorted(folder.rglob("*")):
                rel = path.relative_to(self.stages_dir)
                if path.is_file() and path.suffix in RECORD_SUFFIXES and not any(
                        p in NOT_RECORDS for p in rel.parts):
                    out.append((path, str(rel)))
        return out

    def pack(self) -> None:
        """Write ``<out>/records.tar.gz`` anew (atomically: a temporary file in <out>, renamed)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path, name in self.record_files():
                tar.add(path, arcname=name)
        data = buf.getvalue()
        reason = out_fits(self.out, {"records.tar.gz": len(data)}, spare_files=1)
        if reason:
            self.log(f"records.tar.gz ({len(data) / 2**20:.1f} MiB) not written: {reason}")
            return
        tmp = self.out / ".records.tar.gz.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.out / "records.tar.gz")

    def summary(self, extra: dict[str, Any] | None = None) -> None:
        doc = {"mode": "tiny" if self.mode.tiny else "full", "deadline_s": round(self.deadline - self.started, 1),
               "elapsed_s": round(time.time() - self.started, 1), "out": str(self.out),
               "costs": self.costs.to_json() if self.costs else None,
               "stages": {n: {k: v for k, v in (self.status(n) or {}).items() if k != "commands"} for n in STAGES
                          if self.status(n)}, **(extra or {})}
        (self.work / "run.json").write_text(json.dumps(doc, indent=1, default=str))

    # ----------------------------------------------------------------------------------------- running
    def run_command(self, stage: str, cmd: Command) -> dict[str, Any]:
        """Run one command with the time left (less the packing reserve) as its timeout; its output goes to
        ``<stage>/<name>.log``."""
        folder = self.stages_dir / stage
        log_path = folder / f"{cmd.name}.log"
        timeout = self.left() - PACK_RESERVE_S
        argv = [sys.executable, *cmd.argv]
        self.log(f"{stage}/{cmd.name}: start ({timeout:.0f} s left): {' '.join(cmd.argv)}")
        t0 = time.time()
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
        timed_out = False
        with open(log_path, "w") as fh:
            proc = self.child = subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                                 start_new_session=True)
            try:
                rc = proc.wait(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = stop(proc)
            finally:
                self.child = None
        wall = time.time() - t0
        found = len(job_records(folder / cmd.name)) if cmd.jobs else None
        result = {"name": cmd.name, "argv": cmd.argv, "returncode": rc, "wall_s": round(wall, 2),
                  "timed_out": timed_out, "jobs": cmd.jobs, "jobs_found": found}
        ok = rc == 0 and not timed_out and (found is None or found == cmd.jobs)
        what = "stopped at the deadline" if timed_out else ("done" if ok else f"failed ({rc})")
        self.log(f"{stage}/{cmd.name}: {what} in {wall:.1f} s" + (f", {found}/{cmd.jobs} jobs" if cmd.jobs else ""))
        if not ok and not timed_out:
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            self.log(f"{stage}/{cmd.name}: last lines of {log_path}:\n    " + "\n    ".join(tail))
        return {**result, "ok": ok}

    def run_stage(self, name: str) -> str:
        """Run a stage's commands, each if its estimate fits the time left; write its status; returns the status."""
        folder = self.stages_dir / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.running = name
        st = self.stage(name)
        started, results, skipped = time.time(), [], []
        fresh = not (self.cache / "images").is_dir()
        for cmd in st.commands:  # each builds on the one before: once one is skipped, so are the rest
            estimate = self.costs.estimate(cmd.plan) if self.costs else None
            left = self.left() - PACK_RESERVE_S
            if skipped or (estimate is not None and estimate > left):
                reason = (f"estimated {estimate:.0f} s > {left:.0f} s left before the deadline" if not skipped
                          else f"follows {skipped[0]['name']}, which was skipped")
                self.log(f"{name}/{cmd.name}: skipped: {reason}")
                skipped.append({"name": cmd.name, "argv": cmd.argv, "jobs": cmd.jobs, "skipped": reason,
                                "estimate_s": None if estimate is None else round(estimate, 1)})
                continue
            res = self.run_command(name, cmd)
            res["estimate_s"] = None if estimate is None else round(estimate, 1)
            results.append(res)
            if not res["ok"]:
                break
        done = [r for r in results if r["ok"]]
        if results and len(done) == len(st.commands):
            status = "ok"
        elif not results:
            status = "skipped"
        elif any(r["timed_out"] for r in results) or (skipped and done == results):
            status = "partial"
        else:
            status = "failed"
        if name == "smoke" and status == "ok" and not self.mode.tiny:
            status = self.check_gpu_tests()
        doc = {"stage": name, "status": status, "mode": "tiny" if self.mode.tiny else "full",
               "started": dt.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
               "wall_s": round(time.time() - started, 2), "fresh_cache": fresh if name == "table1" else None,
               "reason": skipped[0]["skipped"] if skipped else None, "commands": results + skipped}
        (folder / "status.json").write_text(json.dumps(doc, indent=1))
        self.running = None
        self.log(f"{name}: {status} in {doc['wall_s']:.1f} s")
        return status

    def mark_stopped(self, reason: str, status: str = "error") -> None:
        """The stage running now ended without its own status: write one (not valid, so a later run redoes the
        stage, but its finished jobs' records are packed)."""
        if self.running is not None and not (self.stages_dir / self.running / "status.json").is_file():
            (self.stages_dir / self.running / "status.json").write_text(json.dumps(
                {"stage": self.running, "status": status, "mode": "tiny" if self.mode.tiny else "full",
                 "reason": reason, "commands": []}, indent=1))
        self.running = None

    def interrupted(self, signum: int, _frame: Any) -> None:
        """SIGTERM or SIGINT from outside (the machine's own time limit, shorter than ``--deadline``): stop the running
        command's process group, mark its stage ``interrupted`` (not valid, but its finished jobs' records are
        packed), and pack what there is before exiting."""
        self.log(f"gpu-run: signal {signum} with {self.left():.0f} s to the deadline: packing what there is")
        if self.child is not None:
            stop(self.child, grace=5)
        self.mark_stopped(f"signal {signum}", "interrupted")
        self.summary({"interrupted_by": signum})
        self.pack()
        raise SystemExit(128 + signum)

    def check_gpu_tests(self) -> str:
        """On the GPU the ``gpu`` tests must have run (not been skipped): ok, else failed."""
        import xml.etree.ElementTree as ET

        xml = self.stages_dir / "smoke" / "gpu-tests.xml"
        try:
            suite = ET.parse(xml).getroot()
        except (OSError, ET.ParseError) as exc:
            self.log(f"smoke: no readable test report {xml} ({exc})")
            return "failed"
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        ran, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        if ran == 0 or skipped:
            self.log(f"smoke: the gpu tests did not run here ({ran} collected, {skipped} skipped): no usable GPU")
            return "failed"
        return "ok"

    def export_checkpoints(self) -> None:
        """Table 1's backbones into ``<out>/checkpoints/`` as fp16 parts, if they fit what <out> may hold (the paper's
        backbones first, when not all of them do)."""
        folders: dict[str, str] = {}  # one job folder per model: its records name the checkpoint and its config
        for path in sorted((self.stages_dir / "table1" / "sweep").glob("*/results.json")):
            folders.setdefault(json.loads(path.read_text())["meta"]["config"]["model"]["name"], str(path.parent))
        order = sorted(folders, key=lambda m: ("vgg16", "alexnet").index(m) if m in ("vgg16", "alexnet") else 2)
        staging = self.work / "checkpoints"
        for n in range(len(order), 0, -1):
            shutil.rmtree(staging, ignore_errors=True)
            proc = subprocess.run([sys.executable, "-m", "pqattack.cache", "export", *[folders[m] for m in order[:n]],
                                   str(staging / "table1-backbones.pqc"), "--dtype", "fp16", "--part-mb",
                                   str(EXPORT_PART_MB), "--cache", str(self.cache)], cwd=REPO, capture_output=True,
                                  text=True, timeout=max(10.0, self.left()))
            if proc.returncode != 0:
                self.log(f"checkpoints: export failed: {proc.stderr.strip()[-2000:]}")
                return
            files = {f"checkpoints/{p.name}": p.stat().st_size for p in sorted(staging.iterdir())}
            reason = out_fits(self.out, files, spare_files=1, reserve_bytes=10 * 2**20)  # the later records
            if reason is None:
                (self.out / "checkpoints").mkdir(exist_ok=True)
                for rel in files:
                    shutil.copyfile(staging / Path(rel).name, self.out / rel)
                self.log(f"checkpoints: {', '.join(order[:n])} in {len(files)} file(s), "
                         f"{sum(files.values()) / 2**20:.1f} MiB, in {self.out / 'checkpoints'}")
                return
            self.log(f"checkpoints: {', '.join(order[:n])} do not fit in {self.out}: {reason}")

    def environment(self) -> dict[str, Any]:
        """The machine: GPU, driver, torch and CUDA versions, free GPU memory (or the CPU in tiny mode)."""
        import platform

        import torch

        env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                               "cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            env.update(gpu=torch.cuda.get_device_name(), gpu_free_gib=round(free / 2**30, 1),
                       gpu_total_gib=round(total / 2**30, 1))
            try:
                smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=30)
                env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired, IndexError):
                env["driver"] = None
        return env

    def run_and_estimate(self, name: str) -> int:
        """Run stage ``name`` unless its records are valid already; then the costs the later stages are estimated
        from. Returns 1 when a required stage did not succeed (the run stops), else 0."""
        code = 0
        if self.valid(name):
            self.log(f"{name}: skipped: its records are present and valid ({self.stages_dir / name})")
        else:
            if name != "smoke" and not self.valid("smoke"):
                self.log(f"{name}: skipped: no valid smoke records (the smoke stage checks the GPU path first)")
                return 0
            status = self.run_stage(name)
            if name in REQUIRED and status != "ok":
                self.log(f"{name}: {status}: the run stops here")
                code = 1
        if self.valid("smoke") and self.costs is None:
            try:
                self.costs = measure_costs(self.stages_dir / "smoke")
            except (KeyError, StopIteration, ValueError, ZeroDivisionError) as exc:
                self.log(f"estimates: the smoke records lack a timing ({type(exc).__name__}: {exc}); the later "
                         f"stages run without estimates, stopped by the deadline only")
        if name == "table1" and self.status("table1") and self.costs is not None:
            refine_costs(self.costs, self.stages_dir / "table1")
        return code

    def main(self) -> int:
        self.log(f"gpu-run: {'tiny (CPU)' if self.mode.tiny else 'full'} mode, deadline {self.left():.0f} s, "
                 f"out {self.out}, work {self.work}")
        env = self.environment()
        (self.work / "environment.json").write_text(json.dumps(env, indent=1))
        self.log("machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
        if not self.mode.tiny and "gpu" not in env:
            self.log("no CUDA device visible to torch: the full run needs a GPU (use --tiny on a CPU)")
            return 2
        self.take_previous()
        handlers = {sig: signal.signal(sig, self.interrupted) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self.run_stages()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def run_stages(self) -> int:
        """Every wanted stage in order, each packed as soon as it ends (an exception included), Table 1's backbones
        exported after its records are packed; returns 1 when a required stage failed."""
        code = 0
        for name in STAGES:
            if name not in self.wanted:
                continue
            try:
                code = self.run_and_estimate(name)
            except Exception as exc:  # noqa: BLE001 -- whatever breaks here, what is done is packed below
                self.mark_stopped(f"{type(exc).__name__}: {exc}")
                required = name in REQUIRED
                self.log(f"{name}: {type(exc).__name__}: {exc}: " + ("the run stops here" if required else
                                                                      "on to the next stage"))
                code = 1 if required else 0
            self.summary()
            self.pack()  # before the checkpoint export, which the deadline may cut short
            if name == "table1" and self.status("table1") and not any((self.out / "checkpoints").glob("*.pqc")):
                if self.left() < EXPORT_MIN_S:
                    self.log(f"checkpoints: not exported: {self.left():.0f} s left (an export needs {EXPORT_MIN_S} s)")
                else:
                    try:
                        self.export_checkpoints()
                    except (OSError, subprocess.SubprocessError) as exc:
                        self.log(f"checkpoints: export failed: {type(exc).__name__}: {exc}")
            if code:
                break
        self.log(f"gpu-run: finished with {self.left():.0f} s to the deadline; records in {self.out / 'records.tar.gz'}")
        self.summary()
        self.pack()
        return code


def stop(proc: subprocess.Popen, grace: float = 10) -> int:
    """SIGTERM to a command's process group, SIGKILL after ``grace`` seconds; its return code."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()
    except ProcessLookupError:
        return proc.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pqattack.gpu.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", help="where the records come back (default: $OUT, else <work>/out)")
    p.add_argument("--work", default="outputs/gpu-run", help="stage folders, caches and logs (default %(default)s)")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds from the start for all stages")
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (smallcnn, a few hundred images)")
    p.add_argument("--stages", help=f"a subset of {','.join(STAGES)} (default: all, in that order)")
    p.add_argument("--previous", help="records.tar.gz (or its folder) of an earlier run: its valid stages are kept")
    p.add_argument("--started", help=argparse.SUPPRESS)  # the wrapper's start time (epoch s): the deadline counts from it
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return Run(parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())
