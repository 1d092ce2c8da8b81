"""Tables rendered from rows: the Table 1 layout, attack variants, transfer matrices."""

import pytest

from pqattack.labels import attack_label, is_paper_attack
from pqattack.report.tables import TableError, dedupe_rows, markdown_table, render_tables


def row(attack: str, system: str, value: float, **kw) -> dict:
    return {"dataset": "cifar10", "model": "vgg16", "quantizer": "kmeans", "bits": 16, "M": 4, "K": 16,
            "attack": attack, "system": system, "map": value, **kw}


def test_table1_layout_and_values() -> None:
    rows = [row("clean", "sdc", 80.04), row("aod", "sdc", 12.25), row("clean", "adc", 81.0),
            row("clean", "sdc", 80.04, bits=24, K=64)]
    text = markdown_table(rows)
    assert "| system | attack | vgg16 16b | vgg16 24b |" in text
    assert "| SDC | clean | 80.0 | 80.0 |" in text and "| SDC | aod | 12.2 | - |" in text  # 12.25 rounds half-even
    assert "| ADC | aod | - | - |" in text


def test_attack_variants_get_their_own_rows_and_stay_out_of_paper_comparisons() -> None:
    base = dict(similarity="dot", temperature=1.0, eps=8 / 255, step=0.01, iters=5)
    paper = row("aod", "sdc", 20.0, **base)
    sharp = row("aod", "sdc", 9.0, **{**base, "similarity": "cos", "temperature": 0.1})
    assert attack_label(paper) == "aod" and attack_label(sharp) == "aod (cos, T=0.1)"
    assert is_paper_attack(paper) and not is_paper_attack(sharp) and is_paper_attack(row("clean", "sdc", 1.0))
    text = markdown_table([row("clean", "sdc", 50.0), paper, sharp])
    assert "| SDC | aod | 20.0 |" in text and "| SDC | aod (cos, T=0.1) | 9.0 |" in text


def test_attacks_beyond_the_paper_and_loop_options_get_their_own_rows() -> None:
    base = dict(similarity="dot", temperature=1.0, eps=8 / 255, step=0.01, iters=5)
    margin = row("margin", "sdc", 8.0, **base, kappa=0.1)
    mi = row("margin", "sdc", 6.0, **base, kappa=0.1, momentum=1.0)
    restarts = row("margin", "sdc", 5.0, **base, kappa=0.5, restarts=4, restart_pick="oracle")
    assert attack_label(margin) == "margin" and is_paper_attack(margin)
    assert attack_label(mi) == "margin (MI=1)" and not is_paper_attack(mi)
    assert attack_label(restarts) == "margin (kappa=0.5, restarts=4, pick=oracle)"
    text = markdown_table([row("clean", "sdc", 50.0), margin, mi, restarts])
    assert "| SDC | margin | 8.0 |" in text and "| SDC | margin (MI=1) | 6.0 |" in text
    assert "| SDC | margin (kappa=0.5, restarts=4, pick=oracle) | 5.0 |" in text
    transfer = [row("clean", "sdc", 80.0, model=m) for m in ("resnet18", "vgg16")]
    for momentum, value in ((None, 40.0), (1.0, 30.0)):
        transfer.append(row("aod", "sdc", value, model="vgg16", source_model="resnet18", source_bits=16,
                            transfer=True, momentum=momentum))
    text = render_tables(transfer)
    assert "AOD queries made on the row's model" in text and "AOD (MI=1) queries made on the row's model" in text
    assert "| SDC | resnet18 | - | 40.0 |" in text and "| SDC | resnet18 | - | 30.0 |" in text


def test_model_transfer_matrix() -> None:
    rows = []
    for tgt in ("resnet18", "vgg16"):
        rows.append(row("clean", "sdc", 80.0, model=tgt))
        for src in ("resnet18", "vgg16"):
            rows.append(row("aod", "sdc", 10.0 if src == tgt else 50.0, model=tgt, source_model=src,
                            source_bits=16, transfer=src != tgt))
    text = render_tables(rows)
    assert "| system | generated on | resnet18 | vgg16 |" in text
    assert "| SDC | resnet18 | 10.0 | 50.0 |" in text and "| SDC | vgg16 | 50.0 | 10.0 |" in text


def test_an_ensemble_source_is_a_row_of_the_model_matrix_not_a_column() -> None:
    recipe = dict(epochs=2, device="cpu", precision="bf16")
    rows = [row("clean", "sdc", 50.0, model="vgg16", **recipe), row("clean", "sdc", 60.0, model="resnet18", **recipe),
            row("aod", "sdc", 10.0, model="vgg16", source_model="vgg16", source_bits=16, **recipe),
            row("aod", "sdc", 30.0, model="vgg16", source_model="resnet18", source_bits=16, transfer=True, **recipe),
            row("aod", "sdc", 25.0, model="vgg16", source_model="alexnet+resnet18", source_bits=16, transfer=True,
                **recipe)]
    text = render_tables(rows)
    assert "| system | generated on | resnet18 | vgg16 |" in text
    assert "| SDC | alexnet+resnet18 | - | 25.0 |" in text and "| SDC | resnet18 | - | 30.0 |" in text
    assert "?" not in text


def test_collect_reads_a_sweep_folder_once(tmp_path) -> None:
    import json

    from pqattack.report.collect import write_table

    def meta(model: str, seconds: float) -> dict:
        return {"config": {"model": {"name": model}}, "device": "cpu", "timings_s": {"total": seconds},
                "test_accuracy": 70.0, "training": {"train_seconds": 600.0}, "versions": {"torch": "x"}}

    jobs = {"0_a": ("vgg16", 60.0, 50.0), "1_b": ("resnet18", 120.0, 40.0)}
    rows_all = []
    for name, (model, secs, value) in jobs.items():
        (tmp_path / name).mkdir()
        rows = [row("clean", "sdc", value, model=model)]
        rows_all += rows
        (tmp_path / name / "results.json").write_text(json.dumps({"meta": meta(model, secs), "rows": rows}))
    (tmp_path / "results.json").write_text(json.dumps({"meta": {"jobs": [meta("x", 999.0)]}, "rows": rows_all}))
    md = write_table([tmp_path], tmp_path / "out" / "t", "T", "python -m pqattack experiment=t").read_text()
    assert "summed: 3.0 min" in md and "resnet18 70.0, vgg16 70.0" in md
    assert "| SDC | clean | 40.0 | 50.0 |" in md
    record = json.loads((tmp_path / "out" / "t.json").read_text())
    assert len(record["rows"]) == 2 and record["meta"]["command"] == "python -m pqattack experiment=t"


@pytest.mark.parametrize("make", ["absent", "empty"])
def test_a_source_without_records_is_refused_and_nothing_written(tmp_path, make: str) -> None:
    """A mistyped sweep folder once rendered an empty table with blank provenance; now it is one clear error."""
    import subprocess
    import sys

    source = tmp_path / "sweep"
    if make == "empty":
        source.mkdir()
    proc = subprocess.run([sys.executable, "-m", "pqattack.report.collect", str(source), "--out",
                           str(tmp_path / "out" / "t"), "--command", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("table error:") and str(source) in proc.stderr
    assert not (tmp_path / "out").exists()


def test_rows_of_one_cell_that_differ_are_refused_with_both_files(tmp_path) -> None:
    """Two records fill the same cell with rows that differ outside the cell (here the top k and the tie
    protocol): collecting them stops with an error naming both files, and writes nothing."""
    import json
    import subprocess
    import sys

    recipe = dict(epochs=2, device="cpu", precision="bf16")
    a = row("clean", "sdc", 60.0, topk=None, ties="expected", **recipe)
    b = row("clean", "sdc", 60.0, topk=100, ties="grouped", **recipe)
    for name, r in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"meta": {"config": {"model": {"name": "vgg16"}}},
                                                                  "rows": [r]}))
    proc = subprocess.run([sys.executable, "-m", "pqattack.report.collect", str(tmp_path / "a"), str(tmp_path / "b"),
                           "--out", str(tmp_path / "out" / "t"), "--command", "x"], capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("table error:") and len(err.splitlines()) == 1
    assert str(tmp_path / "a" / "results.json") in err and str(tmp_path / "b" / "results.json") in err
    assert "topk" in err and "ties" in err
    assert not (tmp_path / "out").exists()
    # identical rows (the clean row every job of one target repeats) are merged
    assert len(dedupe_rows([a, dict(a)])) == 1
    # a page must name the command that made its records
    proc = subprocess.run([sys.executable, "-m", "pqattack.report.collect", str(tmp_path / "a"), "--out",
                           str(tmp_path / "out" / "t")], capture_output=True, text=True)
    assert proc.returncode == 2 and "--command" in proc.stderr and not (tmp_path / "out").exists()


def test_a_diagnostic_an_older_record_lacks_is_no_disagreement() -> None:
    """A clean row from a record made before the ranking diagnostics existed and one made after fill one cell:
    merged, keeping the row with the diagnostics; the same diagnostic with two values still stops the table."""
    recipe = dict(epochs=2, device="cpu", precision="bf16")
    older = row("clean", "sdc", 60.0, **recipe)
    newer = {**older, "first_relevant_rank": 7.66, "precision_at_10": 64.1, "map_chance": 10.1}
    for pair in ([older, newer], [newer, older]):
        (kept,) = dedupe_rows(pair)
        assert kept == newer
    with pytest.raises(TableError, match="precision_at_10"):
        dedupe_rows([newer, {**newer, "precision_at_10": 50.0}])
    with pytest.raises(TableError, match="map"):
        dedupe_rows([older, {**newer, "map": 61.0}])


def test_two_trainings_of_one_checkpoint_are_named_as_such() -> None:
    """Rows carry the start of their checkpoint's content digest: two records of one checkpoint key whose trainings
    gave other weights disagree about a cell, and the error says that (re-run from one training), not "collect them
    into separate tables"; a row from before the digest was recorded is merged with a newer one, keeping it."""
    recipe = dict(epochs=2, device="cpu", precision="bf16", checkpoint="3b6d29549c7c0a6a3e37b070")
    first = row("apd", "sdc", 12.6, **recipe, checkpoint_sha256="0123456789abcdef")
    again = {**first, "checkpoint_sha256": "fedcba9876543210", "map": 12.4}
    with pytest.raises(TableError, match="checkpoint_sha256: '0123456789abcdef' vs 'fedcba9876543210'.*two trainings"
                                         " of one checkpoint configuration"):
        dedupe_rows([first, again])
    with pytest.raises(TableError, match="collect them into separate tables"):  # another checkpoint: not that
        dedupe_rows([first, {**again, "checkpoint": "675e0b90e0d15502ec0f3a5a"}])
    older = {k: v for k, v in first.items() if k != "checkpoint_sha256"}
    assert dedupe_rows([older, first]) == [first] and dedupe_rows([first, older]) == [first]


def test_a_job_row_carries_its_checkpoint_digest(tmp_path, shared_cache) -> None:  # noqa: ANN001
    """A real job's rows name the checkpoint's content: the start of the sha256 its cache entry holds."""
    from pqattack.cache import ArtifactCache

    from .conftest import TINY, run_job

    res = run_job([*TINY, "attack=basic"], tmp_path / "r", shared_cache)
    ckpt = res["meta"]["cache_keys"]["checkpoint"]
    digest = ArtifactCache(shared_cache).digest("checkpoint", ckpt)
    assert {r["checkpoint_sha256"] for r in res["rows"]} == {digest[:16]} and len(digest) == 64


def test_a_defense_setting_an_older_record_lacks_counts_at_its_default() -> None:
    """An adversarially trained target's row from before ``defense.lr`` and ``defense.random_start`` existed, and the
    same cell re-run since (the two records of one checkpoint in two results files): merged, keeping the newer row;
    the setting at another value than its default, or two values, still stops the table."""
    recipe = dict(epochs=10, device="cpu", precision="bf16", defense="adv (eps=8/255, beta=1, k=2)", defense_eps=8 / 255)
    older = row("clean", "sdc", 25.1, **recipe)
    newer = {**older, "defense_lr": 0.01, "defense_random_start": True}
    for pair in ([older, newer], [newer, older]):
        (kept,) = dedupe_rows(pair)
        assert kept == newer
    with pytest.raises(TableError, match="defense_lr"):
        dedupe_rows([older, {**newer, "defense_lr": 0.02}])
    with pytest.raises(TableError, match="defense_random_start"):
        dedupe_rows([newer, {**newer, "defense_random_start": False}])


def test_the_recipe_is_in_the_heading_or_a_column_when_mixed() -> None:
    cpu = dict(epochs=2, device="cpu", precision="bf16")
    gpu = dict(epochs=40, device="cuda", precision="bf16")
    one = markdown_table([row("clean", "sdc", 60.0, **cpu), row("aod", "sdc", 20.0, **cpu)])
    assert "; recipe: 2 epochs, cpu, bf16" in one.splitlines()[0]
    both = markdown_table([row("clean", "sdc", 60.0, **cpu), row("clean", "sdc", 85.0, **gpu)])
    assert "recipe:" not in both.splitlines()[0]
    assert "| vgg16 16b (2 epochs, cpu, bf16) | vgg16 16b (40 epochs, cuda, bf16) |" in both
    assert "| SDC | clean | 60.0 | 85.0 |" in both


def test_a_second_seed_fills_cells_of_its_own_under_a_recipe_that_names_it() -> None:
    """Two seeds of one job (another backbone, other numbers) are two cells, not a disagreement that stops the
    collection and the report; seed 0, every record's so far, keeps its labels."""
    cpu = dict(epochs=2, device="cpu", precision="fp32")
    rows = [row("clean", "sdc", 60.0, seed=0, **cpu), row("clean", "sdc", 58.0, seed=1, **cpu)]
    assert dedupe_rows(rows) == rows
    both = markdown_table(rows)
    assert "| vgg16 16b (2 epochs, cpu, fp32) | vgg16 16b (2 epochs, cpu, fp32, seed 1) |" in both
    assert "| SDC | clean | 60.0 | 58.0 |" in both


def test_transfer_matrices_leave_out_the_rows_of_another_quantizer() -> None:
    """A report over Tables 2 and 4 together: the PQN rows on VGG16 (their own recipe and clean mAP) stay out of
    the K-means transfer matrix instead of stopping it or replacing its clean cells."""
    from pqattack.report.tables import transfer_tables

    km = dict(epochs=2, device="cpu", precision="bf16")
    pqn = dict(epochs=2, pqn_epochs=1, device="cpu", precision="bf16")
    rows = [row("clean", "sdc", 60.0, **km), {**row("clean", "sdc", 55.0, **km), "model": "resnet18"},
            row("aod", "sdc", 18.0, source_model="vgg16", source_bits=16, transfer=False, **km),
            row("aod", "sdc", 38.0, source_model="resnet18", source_bits=16, transfer=True, **km),
            {**row("aod", "sdc", 34.0, source_model="vgg16", source_bits=16, transfer=True, **km), "model": "resnet18"},
            {**row("aod", "sdc", 24.0, source_model="resnet18", source_bits=16, transfer=False, **km),
             "model": "resnet18"},
            row("clean", "sdc", 61.0, quantizer="pqn", **pqn),
            row("aod", "sdc", 24.0, quantizer="pqn", source_model="vgg16", source_bits=16, transfer=False, **pqn)]
    text = transfer_tables(rows)
    assert "| SDC | clean | 55.0 | 60.0 |" in text
    assert "| SDC | resnet18 | 24.0 | 38.0 |" in text and "61.0" not in text


def test_transfer_matrices_leave_out_the_rows_of_a_defended_target() -> None:
    """A defended target's clean row (behind a bit-depth transform, mAP 51) once took the undefended target's clean
    cell of the Table 4 matrix beside its white-box AOD diagonal; defended rows stay out of the matrices."""
    from pqattack.report.tables import transfer_tables

    km = dict(epochs=2, device="cpu", precision="bf16")
    rows = [row("clean", "sdc", 60.0, **km), {**row("clean", "sdc", 55.0, **km), "model": "resnet18"},
            row("aod", "sdc", 18.0, source_model="vgg16", source_bits=16, transfer=False, **km),
            row("aod", "sdc", 38.0, source_model="resnet18", source_bits=16, transfer=True, **km),
            {**row("aod", "sdc", 24.0, source_model="resnet18", source_bits=16, transfer=False, **km),
             "model": "resnet18"},
            {**row("clean", "sdc", 51.0, **km), "defense": "bitdepth (4 bits)"},
            {**row("aod", "sdc", 30.0, source_model="vgg16", source_bits=16, transfer=False, **km),
             "defense": "bitdepth (4 bits)", "oblivious": False}]
    text = transfer_tables(rows)
    assert "| SDC | clean | 55.0 | 60.0 |" in text and "| SDC | vgg16 | - | 18.0 |" in text
    assert "51.0" not in text and "30.0" not in text


def test_records_of_another_query_count_fill_cells_of_their_own(tmp_path) -> None:
    """A 100-query budget sweep and a 1,000-query table on one checkpoint: once one cell (their clean rows differ)
    and the report stopped; the query count, from the row or from the job's config for older records, now keeps
    them apart, and the recipe says so."""
    import json

    from pqattack.report.records import gather_records
    from pqattack.report.tables import recipe_label

    recipe = dict(epochs=10, device="cpu", precision="bf16")
    for name, n, value in (("table", 1000, 81.7), ("budget", 100, 81.2)):
        (tmp_path / name).mkdir()
        meta = {"config": {"model": {"name": "fastnet"}, "dataset": {"num_queries": n}}}
        rows = [row("clean", "sdc", value, model="fastnet", **recipe)]  # an older record: no "queries" in the row
        (tmp_path / name / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    rows = gather_records([tmp_path]).rows
    assert sorted((r["queries"], r["map"]) for r in rows) == [(100, 81.2), (1000, 81.7)]
    assert sorted(recipe_label(r) for r in rows) == ["10 epochs, cpu, bf16", "10 epochs, cpu, bf16, 100 queries"]
    # beside a transfer matrix of the 1,000-query protocol, the 100-query rows stay out of it
    transfer = row("aod", "sdc", 30.0, model="fastnet", source_model="vgg16", source_bits=16, transfer=True,
                   queries=1000, **recipe)
    text = render_tables([*rows, transfer, row("clean", "sdc", 59.7, model="vgg16", queries=1000, epochs=2,
                                                device="cpu", precision="bf16")])
    assert "| system | generated on | vgg16 | fastnet |" in text and "| SDC | vgg16 | - | 30.0 |" in text


def test_each_adversarially_trained_checkpoint_keeps_its_own_training_time(tmp_path) -> None:
    """Two defended checkpoints that differ only in epochs are two entries, named by the defense's own label."""
    import json

    from pqattack.report.collect import write_table

    for name, epochs, seconds in (("0_a", 1, 120.0), ("1_b", 3, 360.0)):
        defense = {"kind": "adv", "eps": 2 / 255, "beta": 0.3, "epochs": epochs}
        meta = {"config": {"model": {"name": "fastnet"}, "quantizer": {"kind": "pqn"}, "bits": 24, "defense": defense},
                "device": "cpu", "timings_s": {"total": seconds}, "defense_training": {"train_seconds": seconds}}
        label = "adv (eps=2/255, beta=0.3, k=2" + (", epochs=3)" if epochs == 3 else ")")
        rows = [row("clean", "sdc", 70.0, model="fastnet", quantizer="pqn", bits=24, defense=label)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    write_table([tmp_path], tmp_path / "out" / "t", "T", "python -m pqattack experiment=t")
    seconds = json.loads((tmp_path / "out" / "t.json").read_text())["meta"]["training_seconds_per_checkpoint"]
    assert seconds == {"fastnet+pqn 24b adv (eps=2/255, beta=0.3, k=2)": 120.0,
                       "fastnet+pqn 24b adv (eps=2/255, beta=0.3, k=2, epochs=3)": 360.0}


def test_two_recipes_of_one_backbone_keep_their_own_training_time_and_accuracy(tmp_path) -> None:
    """fastnet at 20 and at 10 epochs collected into one table: both trainings and accuracies are listed, each with
    its recipe (once, whichever came last stood for both under the name "fastnet")."""
    import json

    from pqattack.report.collect import write_table

    for name, epochs, seconds, acc in (("0_a", 20, 924.0, 90.1), ("1_b", 10, 450.0, 89.3)):
        meta = {"config": {"model": {"name": "fastnet"}, "quantizer": {"kind": "kmeans"}, "bits": 16,
                           "trainer": {"max_epochs": epochs}, "seed": 0},
                "device": "cpu", "precision": "bf16", "timings_s": {"total": seconds},
                "training": {"train_seconds": seconds}, "test_accuracy": acc}
        (tmp_path / name).mkdir()
        rows = [row("clean", "sdc", 80.0, model="fastnet", epochs=epochs, device="cpu", precision="bf16")]
        (tmp_path / name / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    md = write_table([tmp_path], tmp_path / "out" / "t", "T", "python -m pqattack experiment=t").read_text()
    assert "fastnet (20 epochs, bf16) 15.4 min" in md and "fastnet (10 epochs, bf16) 7.5 min" in md
    assert "fastnet (10 epochs, bf16) 89.3, fastnet (20 epochs, bf16) 90.1" in md


def test_a_model_trained_with_two_recipes_is_two_rows_and_columns_of_the_transfer_matrix(tmp_path) -> None:
    """fastnet at 20 epochs (Table 4's) and at 10 (a booster sweep's) both make queries for VGG16: once the two
    rows filled one cell (the row did not record its source's recipe) and the report stopped; then the matrix
    stopped on a model with two recipes. The source's epochs, recorded or taken from the job's config for older
    records, now keep them apart, each recipe a row and a column of its own."""
    import json

    from pqattack.report.records import gather_records
    from pqattack.report.tables import transfer_tables

    vgg, fast = dict(epochs=2, device="cpu", precision="bf16"), dict(device="cpu", precision="bf16")
    for name, epochs, value in (("table4", 20, 54.7), ("boost", 10, 56.0)):
        recipes = {"fastnet": {"max_epochs": epochs}, "vgg16": {"max_epochs": 2}}
        meta = {"config": {"model": {"name": "vgg16"}, "dataset": {"num_queries": 1000}, "trainer": recipes["vgg16"],
                           "recipes": recipes, "transfer": {"source_model": "fastnet"}}}
        rows = [row("clean", "sdc", 59.7, **vgg),  # older records: no source_epochs in the rows
                row("aod", "sdc", value, source_model="fastnet", source_bits=16, transfer=True, **vgg)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    rows = gather_records([tmp_path]).rows
    assert sorted((r.get("source_epochs"), r["map"]) for r in rows if r["attack"] == "aod") == [(10, 56.0), (20, 54.7)]
    rows += [row("clean", "sdc", 83.7, model="fastnet", queries=1000, epochs=20, **fast),
             row("clean", "sdc", 81.7, model="fastnet", queries=1000, epochs=10, **fast)]
    text = transfer_tables(rows)
    assert "| system | generated on | vgg16 | fastnet (10 epochs, cpu, bf16) | fastnet (20 epochs, cpu, bf16) |" in text
    assert "| SDC | clean | 59.7 | 81.7 | 83.7 |" in text
    assert "| SDC | fastnet (20 epochs, cpu, bf16) | 54.7 | - | - |" in text
    assert "| SDC | fastnet (10 epochs, cpu, bf16) | 56.0 | - | - |" in text
    unknown = [{k: v for k, v in r.items() if k != "source_epochs"} for r in rows]
    with pytest.raises(TableError, match=r"do not record the recipe of their source .* fastnet has rows of several"):
        transfer_tables(unknown[:1] + unknown[1:2] + unknown[-2:])


def test_source_epochs_from_a_jobs_config() -> None:
    from pqattack.report.tables import source_epochs_of

    trainer = {"max_epochs": 2}
    recipes = {"fastnet": {"max_epochs": 20}, "fastnet_narrow": {"max_epochs": 10}, "vgg16": trainer}
    assert source_epochs_of({"model": {"name": "vgg16"}, "trainer": trainer}) == 2  # white-box
    assert source_epochs_of({"model": {"name": "vgg16"}, "trainer": trainer, "recipes": recipes,
                             "transfer": {"source_model": "fastnet"}}) == 20
    assert source_epochs_of({"model": {"name": "vgg16"}, "trainer": trainer, "recipes": recipes,
                             "transfer": {"source_model": ["fastnet", "fastnet_narrow"]}}) == "20+10"
    assert source_epochs_of({"model": {"name": "vgg16"}, "trainer": trainer,
                             "transfer": {"source_model": "resnet18"}}) == 2  # no per-model recipes: the job's
    assert source_epochs_of({"model": {"name": "vgg16"}, "trainer": trainer, "transfer": {"source": "/sets/x"}}) is None


def test_the_map_charts_draw_each_recipe_of_a_model_as_its_own_series_whatever_the_row_order() -> None:
    """fastnet at 2 and at 20 epochs: two series in both charts, each bar and point its own recipe's, the same
    figure for rows in either order (one series, overwritten by whichever row came last, before)."""
    from pqattack.report import figures

    def row(epochs: int, bits: int, attack: str, value: float) -> dict:
        return {"dataset": "cifar10", "model": "fastnet", "bits": bits, "attack": attack, "system": "sdc",
                "map": value, "epochs": epochs, "device": "cpu", "precision": "fp32", "seed": 0}

    rows = [row(e, b, a, float(e + b + len(a))) for e in (2, 20) for b in (16, 24) for a in ("clean", "apd")]

    def bars(rs: list[dict]) -> dict[str, list[float]]:
        fig = figures.map_vs_attack(rs, "t")
        return {c.get_label(): [p.get_height() for p in c.patches] for c in fig.axes[0].containers}

    def lines(rs: list[dict]) -> dict[str, list[tuple]]:
        fig = figures.map_vs_bits(rs, "t")
        return {ln.get_label(): list(zip(*ln.get_data())) for ln in fig.axes[0].get_lines()}

    drawn = bars(rows)
    assert drawn == bars(rows[::-1])
    assert drawn["fastnet (2 epochs, cpu, fp32), 16 bits"] == [18.0 + 5, 18.0 + 3]  # clean, apd
    assert drawn["fastnet (20 epochs, cpu, fp32), 24 bits"] == [44.0 + 5, 44.0 + 3]
    curves = lines(rows)
    assert curves == lines(rows[::-1])
    assert curves["fastnet (2 epochs, cpu, fp32), apd"] == [(16, 21.0), (24, 29.0)]
    single = [r for r in rows if r["epochs"] == 20]
    assert set(bars(single)) == {"fastnet, 16 bits", "fastnet, 24 bits"}  # one recipe: the model's name alone


def test_an_attack_with_only_white_box_rows_gets_no_transfer_matrix() -> None:
    """Beside AOD queries transferred between models and between code lengths, a suite member evaluated only on
    its own model and code length (APD here) was drawn as matrices that held nothing but their diagonal."""
    from pqattack.report.tables import transfer_tables

    km = dict(epochs=2, device="cpu", precision="bf16")
    rows = [row("clean", "sdc", 60.0, **km), {**row("clean", "sdc", 55.0, **km), "model": "resnet18"},
            row("clean", "sdc", 61.0, bits=24, **km),
            row("aod", "sdc", 18.0, source_model="vgg16", source_bits=16, transfer=False, **km),
            row("aod", "sdc", 19.0, source_model="vgg16", source_bits=24, transfer=True, **km),
            row("aod", "sdc", 38.0, source_model="resnet18", source_bits=16, transfer=True, **km),
            row("apd", "sdc", 12.0, source_model="vgg16", source_bits=16, transfer=False, **km),
            row("apd", "sdc", 11.0, source_model="vgg16", source_bits=24, transfer=False, bits=24, **km),
            {**row("apd", "sdc", 13.0, source_model="resnet18", source_bits=16, transfer=False, **km),
             "model": "resnet18"}]
    text = transfer_tables(rows)
    assert "AOD queries made at the row's code length" in text and "AOD queries made on the row's model" in text
    assert "APD" not in text


def test_the_committed_results_pages_are_what_their_records_render_to(tmp_path) -> None:
    """Every ``results/*.md`` is rendered from the ``results/*.json`` beside it by the current code: a change of the
    rendering (a heading, a check's wording) that was not carried into the pages fails here."""
    import re

    from pqattack.report.collect import write_table

    from .conftest import REPO

    pages = sorted((REPO / "results").glob("*.json"))
    assert len(pages) >= 20
    stale = []
    for record in pages:
        page = record.with_suffix(".md").read_text()
        title, command = page.splitlines()[0].removeprefix("# "), re.search(r"Command: `(.*)`", page).group(1)
        if write_table([record], tmp_path / record.stem, title, command).read_text() != page:
            stale.append(record.stem)
    assert not stale, f"re-render {stale} with pqattack.report.collect.write_table"


@pytest.mark.slow
def test_the_committed_report_is_what_make_report_builds_from_the_committed_records(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``make report`` in a fresh clone (the records in ``results/``, no job folders under ``outputs/``, no cache)
    rebuilds ``results/report/index.md`` as committed and draws the committed figures: a report built where the
    jobs' own folders lay about differs, and fails here."""
    import json
    import shutil

    from pqattack.report.__main__ import main as report_main

    from .conftest import REPO

    shutil.copytree(REPO / "results", tmp_path / "results")  # with report/figure_data.json, as a clone has it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PQATTACK_CACHE", str(tmp_path / "cache"))
    report_main(["results", "--out", "results/report", "--stand-in", "fastnet=vgg16"])
    built, committed = tmp_path / "results" / "report", REPO / "results" / "report"
    assert (built / "index.md").read_text() == (committed / "index.md").read_text(), "rebuild results/report"
    drawn = json.loads((built / "report.json").read_text())["figures"]  # report.json itself is not committed
    assert sorted(drawn) == sorted(p.name for p in committed.glob("*.png"))


def test_a_rerun_replaces_the_rows_and_jobs_it_made_again_only_when_asked(tmp_path) -> None:
    """A committed record, then the re-run of the jobs a fix changed: with ``--replace`` the re-run's rows replace
    those of their cells and its jobs the records of the same configuration; the rest of the record stays. Without
    it the two disagree and nothing is written."""
    import json

    from pqattack.report.collect import main

    def job(attack: str, value: float, seconds: float, run: str) -> dict:
        config = {"model": {"name": "fastnet"}, "bits": 16, "attack": {"name": attack}, "resume": run == "new",
                  "progress": run == "new", "cache": {"dir": f"/{run}/cache"}}  # where and how it ran, not what
        if run == "new":  # settings added since the old record was made, at their off values
            config["attack"].update({"dither": 0.0, "reference": "attacked", "restarts": None})
        return {"meta": {"config": config, "device": "cpu", "timings_s": {"total": seconds}, "job_dir": run},
                "rows": [row("clean", "sdc", 80.0, model="fastnet"), row(attack, "sdc", value, model="fastnet")]}

    old = [job("apd", 7.0, 60.0, "old"), job("far", 6.5, 120.0, "old")]
    committed = tmp_path / "committed.json"
    committed.write_text(json.dumps({"meta": {"jobs": [j["meta"] for j in old]},
                                     "rows": [r for j in old for r in j["rows"]]}))
    (tmp_path / "rerun" / "0_far").mkdir(parents=True)
    (tmp_path / "rerun" / "0_far" / "results.json").write_text(json.dumps(job("far", 6.1, 300.0, "new")))
    out = tmp_path / "out" / "t"
    args = [str(committed), str(tmp_path / "rerun"), "--out", str(out), "--command", "python -m pqattack x"]

    with pytest.raises(SystemExit):
        main(args)
    assert not out.with_suffix(".json").exists()

    main([*args, "--replace"])
    record = json.loads(out.with_suffix(".json").read_text())
    cells = {r["attack"]: r["map"] for r in record["rows"]}
    assert cells == {"clean": 80.0, "apd": 7.0, "far": 6.1}
    assert sorted((m["config"]["attack"]["name"], m["timings_s"]["total"]) for m in record["meta"]["jobs"]) == [
        ("apd", 60.0), ("far", 300.0)]
    assert record["meta"]["sum_of_job_seconds"] == 360.0
    assert "| SDC | far | 6.1 |" in out.with_suffix(".md").read_text()

    from pqattack.report.collect import same_job

    def cfg(**attack: object) -> dict:
        return {"config": {"bits": 16, "attack": {"name": "far", **attack}}}

    assert same_job(cfg(), cfg(dither=0.0)) and same_job(cfg(reference="attacked"), cfg())
    assert not same_job(cfg(), cfg(dither=0.07)) and not same_job(cfg(reference="bare"), cfg())
    assert not same_job(cfg(eps=0.03), cfg(eps=0.01)) and not same_job({"config": {}}, cfg())
    from pqattack.report.collect import supersedes

    def suite(*members: str) -> dict:
        return {"config": {"bits": 16, "attack": {"name": "none"}, "eval": {"suite": list(members)}}}

    # a re-run whose robust evaluation adds members remakes every row of the earlier job (the worst case included)
    assert supersedes(suite("apd", "far", "basic oblivious=true"), suite("apd", "far"))
    assert not supersedes(suite("apd", "far"), suite("apd", "far", "basic oblivious=true"))
    assert not supersedes(suite("apd"), suite("far")) and not supersedes(suite("apd"), {"config": {"bits": 16}})
    assert not supersedes({"config": {**suite("apd", "far")["config"], "bits": 24}}, suite("apd"))
    # a record made before the defense group existed has no defense node: the same job as an undefended one
    assert same_job(cfg(), {"config": {**cfg()["config"], "defense": {"kind": "none"}}})
    assert not same_job(cfg(), {"config": {**cfg()["config"], "defense": {"kind": "jpeg", "quality": 75}}})
    adv = {"config": {**cfg()["config"], "defense": {"kind": "adv", "eps": 2 / 255}}}  # before defense.lr existed
    assert same_job(adv, {"config": {**cfg()["config"], "defense": {"kind": "adv", "eps": 2 / 255, "lr": 0.01}}})
    assert not same_job(adv, {"config": {**cfg()["config"], "defense": {"kind": "adv", "eps": 2 / 255, "lr": 0.02}}})
