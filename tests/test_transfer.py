"""Black-box transfer: saved adversarial query sets, evaluation on other targets, transfer matrices."""

from pathlib import Path

import pytest
import torch

from pqattack.cache import ArtifactCache
from pqattack.errors import PQAttackError
from pqattack.transfer import AdversarialSet

from .conftest import TINY, run_job, run_sweep


def maps(res: dict, attack: str) -> dict[tuple, float]:
    return {(r["bits"], r["system"]): r["map"] for r in res["rows"] if r["attack"] == attack}


@pytest.fixture(scope="module")
def white_box(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("whitebox") / "run"
    return run_dir, run_job([*TINY, "attack=aod"], run_dir, shared_cache)


def test_saved_set_round_trips_bit_exactly(white_box: tuple[Path, dict], shared_cache: Path) -> None:
    run_dir, res = white_box
    key = res["meta"]["cache_keys"]["adversarial_queries"]
    saved = AdversarialSet.load_entry(run_dir / "adversarial_queries" / key)
    cached, meta = ArtifactCache(shared_cache).load("adversarial_queries", key)
    assert saved.images.dtype == torch.uint8 and saved.images.shape == (60, 3, 32, 32)
    assert torch.equal(saved.images, cached["images"]) and torch.equal(saved.query_index, cached["query_index"])
    src = saved.meta["source"]
    assert (src["dataset"], src["model"], src["bits"], src["quantizer"]) == ("synthetic", "smallcnn", 16, "kmeans")
    assert src["checkpoint"] == res["meta"]["cache_keys"]["checkpoint"]
    assert saved.meta["attack"]["name"] == "aod" and saved.meta["attack"]["iters"] == 5
    assert saved.meta["attack"]["eps"] == pytest.approx(8 / 255) and saved.meta["seed"] == 0


@pytest.mark.parametrize("how", ["run_dir", "key"])
def test_saved_set_on_its_own_source_reproduces_white_box(white_box: tuple[Path, dict], shared_cache: Path,
                                                          tmp_path: Path, how: str) -> None:
    run_dir, res = white_box
    source = run_dir if how == "run_dir" else res["meta"]["cache_keys"]["adversarial_queries"]
    again = run_job([*TINY, f"transfer.source={source}"], tmp_path / "again", shared_cache)
    assert maps(again, "aod") == maps(res, "aod") and maps(again, "clean") == maps(res, "clean")
    assert not any(r.get("transfer") for r in again["rows"])
    # the set records its source's epochs, so the rows of a job that loads it say which recipe made its queries
    epochs = AdversarialSet.load_entry(run_dir / "adversarial_queries" / res["meta"]["cache_keys"][
        "adversarial_queries"]).meta["source"]["epochs"]
    assert epochs == res["meta"]["config"]["trainer"]["max_epochs"]
    assert {r["source_epochs"] for r in again["rows"] if r["attack"] != "clean"} == {epochs}


def test_two_by_two_bits_matrix_has_the_white_box_diagonal(white_box: tuple[Path, dict], shared_cache: Path,
                                                           tmp_path: Path) -> None:
    _, res = white_box
    jobs = [[*TINY, "attack=aod", f"bits={b}", f"transfer.source_bits={s}"] for b in (16, 24) for s in (16, 24)]
    matrix = run_sweep(jobs, tmp_path / "sw", shared_cache)
    cells = {(r["source_bits"], r["bits"], r["system"]): r for r in matrix["rows"] if r["attack"] == "aod"}
    assert set(cells) == {(s, t, sys) for s in (16, 24) for t in (16, 24) for sys in ("sdc", "adc")}
    for sys in ("sdc", "adc"):
        assert cells[(16, 16, sys)]["map"] == maps(res, "aod")[(16, sys)]
        assert cells[(16, 24, sys)]["transfer"] and not cells[(24, 24, sys)]["transfer"]
    table = (tmp_path / "sw" / "results.md").read_text()
    assert "| generated at | 16 bits | 24 bits |" in table
    expected = f"{cells[(16, 24, 'sdc')]['map']:.1f} / {cells[(16, 24, 'adc')]['map']:.1f}"
    assert expected in table


def test_model_transfer_uses_the_source_model_and_target_index(shared_cache: Path, tmp_path: Path) -> None:
    res = run_job([*TINY, "attack=aod", "transfer.source_model=alexnet"], tmp_path / "r", shared_cache)
    adv = [r for r in res["rows"] if r["attack"] == "aod"]
    assert len(adv) == 2 and all(r["transfer"] and r["source_model"] == "alexnet" and r["model"] == "smallcnn"
                                 for r in adv)
    saved = AdversarialSet.load_entry(next((tmp_path / "r" / "adversarial_queries").iterdir()))
    assert saved.meta["source"]["model"] == "alexnet"
    assert saved.meta["source"]["checkpoint"] != res["meta"]["cache_keys"]["checkpoint"]
    assert "generated on" in (tmp_path / "r" / "results.md").read_text()


def test_set_from_another_dataset_is_refused(white_box: tuple[Path, dict], shared_cache: Path,
                                             tmp_path: Path) -> None:
    run_dir, _ = white_box
    with pytest.raises(PQAttackError, match="made on dataset .synthetic.") as err:
        run_job([*TINY, "dataset.seed=5", f"transfer.source={run_dir}"], tmp_path / "r", shared_cache)
    assert (err.value.kind, err.value.exit_code) == ("transfer", 2)


def test_set_from_another_split_is_refused(white_box: tuple[Path, dict], shared_cache: Path, tmp_path: Path) -> None:
    run_dir, _ = white_box
    with pytest.raises(PQAttackError, match="query split") as err:
        run_job([*TINY, "dataset.split_seed=3", f"transfer.source={run_dir}"], tmp_path / "r", shared_cache)
    assert err.value.exit_code == 2


def test_unknown_source_is_refused(tmp_path: Path, shared_cache: Path) -> None:
    with pytest.raises(PQAttackError, match="deadbeef") as err:
        run_job([*TINY, "transfer.source=deadbeef"], tmp_path / "r", shared_cache)
    assert err.value.exit_code == 2


def test_a_set_made_before_sets_recorded_epochs_takes_them_from_the_job(white_box: tuple[Path, dict]) -> None:
    """Rows of a set cached before sets recorded their sources' epochs: this job's sources' (an ensemble's joined);
    a saved set from elsewhere that lacks them leaves the field empty."""
    from pqattack.config import load_job
    from pqattack.records import source_epochs

    from .conftest import compose_config

    run_dir, res = white_box
    entry = run_dir / "adversarial_queries" / res["meta"]["cache_keys"]["adversarial_queries"]
    recorded, old = AdversarialSet.load_entry(entry), AdversarialSet.load_entry(entry)
    old.meta["source"].pop("epochs")
    white = load_job(compose_config([*TINY, "trainer.max_epochs=3"]))
    ensemble = load_job(compose_config([*TINY, "trainer.max_epochs=3", "transfer.source_model=[smallcnn,fastnet]"]))
    saved = load_job(compose_config([*TINY, "transfer.source=/elsewhere"]))
    assert (source_epochs(white, old), source_epochs(ensemble, old), source_epochs(saved, old)) == (3, "3+3", None)
    assert source_epochs(white, recorded) == res["meta"]["config"]["trainer"]["max_epochs"]  # what the set records
