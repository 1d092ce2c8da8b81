"""The artifact cache: content keys, atomic writes, checksums, weights-only loading."""

from pathlib import Path

import pytest
import torch

from pqattack.cache import ArtifactCache, CacheError, spec_key


def test_key_depends_on_every_field_and_not_on_order() -> None:
    a = spec_key("features", {"x": 1, "y": [1, 2]})
    assert a == spec_key("features", {"y": [1, 2], "x": 1})
    assert a != spec_key("features", {"x": 2, "y": [1, 2]})
    assert a != spec_key("codebooks", {"x": 1, "y": [1, 2]})


def test_get_or_build_builds_once(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(5.0)}, {"note": "hi"}

    t1, m1, k1 = cache.get_or_build("checkpoint", {"a": 1}, build)
    t2, m2, k2 = cache.get_or_build("checkpoint", {"a": 1}, build)
    assert len(calls) == 1 and k1 == k2 and torch.equal(t1["w"], t2["w"]) and m2["note"] == "hi"
    assert m2["spec"] == {"a": 1}
    assert not list((tmp_path / "checkpoint").glob(".tmp-*"))


def test_a_load_only_kind_is_loaded_but_never_built(tmp_path: Path) -> None:
    from pqattack.errors import CacheMiss

    ArtifactCache(tmp_path).get_or_build("checkpoint", {"a": 1}, lambda: ({"w": torch.ones(2)}, {}))
    cache = ArtifactCache(tmp_path, load_only=("checkpoint",))
    assert torch.equal(cache.get_or_build("checkpoint", {"a": 1}, lambda: pytest.fail("built"))[0]["w"], torch.ones(2))
    with pytest.raises(CacheMiss, match=r"checkpoint \w+ is not in the cache"):
        cache.get_or_build("checkpoint", {"a": 2}, lambda: pytest.fail("built"))
    with pytest.raises(CacheMiss):  # a disabled cache builds everything, so it cannot hold a load-only kind
        ArtifactCache(tmp_path, enabled=False, load_only=("checkpoint",)).get_or_build(
            "checkpoint", {"a": 1}, lambda: pytest.fail("built"))
    assert cache.get_or_build("features", {"a": 2}, lambda: ({"z": torch.zeros(1)}, {}))[2]  # other kinds build
    assert not (tmp_path / "checkpoint" / spec_key("checkpoint", {"a": 2})).exists()


def test_corrupted_entry_is_refused(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    _, _, key = cache.get_or_build("features", {"a": 1}, lambda: ({"z": torch.ones(100)}, {}))
    f = cache.entry("features", key) / "tensors.pt"
    data = bytearray(f.read_bytes())
    data[-20] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum"):
        cache.load("features", key)


def test_entry_without_metadata_is_a_miss(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    (tmp_path / "features" / "abc").mkdir(parents=True)
    (tmp_path / "features" / "abc" / "tensors.pt").write_bytes(b"half-written")
    assert cache.load("features", "abc") is None


def test_pickles_are_not_loaded(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    path = cache.save("features", "k", {"z": torch.ones(2)}, {})
    # replace the tensors with a pickled object and fix the checksum: weights_only loading refuses it
    import datetime
    import hashlib
    import json

    torch.save({"z": datetime.datetime(2020, 1, 1)}, path / "tensors.pt")  # any non-tensor global
    meta = json.loads((path / "meta.json").read_text())
    meta["sha256"] = hashlib.sha256((path / "tensors.pt").read_bytes()).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        cache.load("features", "k")


def _train_again(cache: ArtifactCache, kind: str, key: str, tensors: dict) -> None:
    """What a checkpoint trained again under its key leaves: the same key and spec, these tensors."""
    import shutil

    meta = cache.load(kind, key)[1]
    shutil.rmtree(cache.entry(kind, key))
    cache.save(kind, key, tensors, {k: v for k, v in meta.items() if k not in ("sha256", "inputs")})


def test_an_entry_made_from_a_checkpoint_trained_again_to_other_weights_is_made_again(tmp_path: Path) -> None:
    """Keys name configurations: a checkpoint trained again under its key may hold other weights (training is not
    bit-reproducible on every CPU). Features (and whatever follows from them) made from the first training were
    once served with the second; they are now made again. A training that reproduces the weights keeps them."""
    cache = ArtifactCache(tmp_path)
    _, _, ckpt = cache.get_or_build("checkpoint", {"model": "m"}, lambda: ({"w": torch.ones(3)}, {}))
    calls = []

    def features() -> tuple[dict, dict]:
        w = cache.load("checkpoint", ckpt)[0]["w"]
        calls.append(w.sum().item())
        return {"z": w * 2}, {}

    spec = {"checkpoint": ckpt, "queries": "q"}
    fkey = cache.get_or_build("features", spec, features)[2]
    assert cache.load("features", fkey)[1]["inputs"] == {f"checkpoint/{ckpt}": cache.digest("checkpoint", ckpt)}
    ckey = cache.get_or_build("codebooks", {"features": fkey, "K": 4}, lambda: ({"c": torch.zeros(2)}, {}))[2]
    assert list(cache.load("codebooks", ckey)[1]["inputs"]) == [f"features/{fkey}"]

    _train_again(cache, "checkpoint", ckpt, {"w": torch.ones(3)})  # the same weights: kept
    assert torch.equal(cache.get_or_build("features", spec, features)[0]["z"], torch.full((3,), 2.0))
    assert calls == [3.0]
    _train_again(cache, "checkpoint", ckpt, {"w": torch.full((3,), 5.0)})  # other weights: made again
    z, _, again = cache.get_or_build("features", spec, features)
    assert again == fkey and calls == [3.0, 15.0] and torch.equal(z["z"], torch.full((3,), 10.0))
    assert cache.load("features", fkey)[1]["inputs"] == {f"checkpoint/{ckpt}": cache.digest("checkpoint", ckpt)}
    assert not [p for p in (tmp_path / "features").iterdir() if p.name.startswith(".stale-")]
    # the codebooks followed from the first features; those changed too, so they are made again in turn
    assert cache.load("codebooks", ckey) is None and not cache.entry("codebooks", ckey).exists()


def test_an_entry_from_before_inputs_were_recorded_is_still_served(tmp_path: Path) -> None:
    """Entries made before inputs were recorded have none to check: loaded as they are (nothing to compare)."""
    import json

    cache = ArtifactCache(tmp_path)
    _, _, ckpt = cache.get_or_build("checkpoint", {"model": "m"}, lambda: ({"w": torch.ones(3)}, {}))
    _, _, fkey = cache.get_or_build("features", {"checkpoint": ckpt}, lambda: ({"z": torch.ones(3)}, {}))
    meta_path = cache.entry("features", fkey) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k != "inputs"}))
    _train_again(cache, "checkpoint", ckpt, {"w": torch.zeros(3)})
    assert cache.load("features", fkey) is not None
