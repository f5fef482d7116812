"""The app's default models (studio.defaults): built once into $STUDIO_CACHE/defaults as ordinary run
directories that load back, found again without training, rebuilt when damaged or stale, built once
when two processes ask at the same time, and never left half-written. Short recipes (STEPS) keep it quick."""

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch

from studio import defaults
from studio.checkpoint import WEIGHTS_FILE, load_model
from studio.runs import list_runs
from studio.train import read_run

STEPS = 20


def weights_of(run_dir: Path) -> Path:
    return Path(run_dir) / read_run(run_dir)["last_checkpoint"] / WEIGHTS_FILE


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache with both default models built at STEPS steps (shared; tests copy it before damaging it).
    A leftover of a killed build and a half-written model directory are planted first."""
    cache = tmp_path_factory.mktemp("studio-cache")
    root = cache / "defaults"
    leftover = root / defaults.BUILDING_DIR / "tiny-softmax.999999.deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "run.json").write_text("{")
    half = root / "tiny-hybrid"
    half.mkdir(parents=True)
    (half / "run.json").write_text('{"format": "hybrid-attention-studio/run@1", "status": "running"}')
    calls = []
    mp = pytest.MonkeyPatch()
    mp.setenv("STUDIO_CACHE", str(cache))
    try:
        dirs = defaults.ensure_default_models(steps=STEPS, progress=lambda f, desc="": calls.append((f, desc)))
    finally:
        mp.undo()
    return cache, dirs, calls


def test_builds_run_directories_that_load_and_predict(built):
    cache, dirs, calls = built
    assert set(dirs) == set(defaults.DEFAULT_MODELS)
    tokens = torch.tensor([list(b"It was the best of times, it was the worst of times.")])
    for name, run_dir in dirs.items():
        assert run_dir == cache / "defaults" / name
        run = read_run(run_dir)
        assert run["status"] == "finished" and run["step"] == STEPS and run["task"]["name"] == "text"
        model = load_model(run_dir).eval()  # the run directory itself, as the app opens a saved run
        with torch.no_grad():
            logits = model(tokens)
        assert logits.shape == (1, tokens.shape[1], model.spec.vocab_size)
        assert torch.isfinite(logits).all()
        marker = json.loads((run_dir / defaults.MARKER_FILE).read_text())
        assert marker["steps"] == STEPS and marker["corpus"] in ("shakespeare", "pydoc")
        assert marker["eval_loss"] < marker["initial_loss"]  # it learnt something even in STEPS steps
    mixers = {layer["mixer"] for layer in read_run(dirs["tiny-hybrid"])["spec"]["layers"]}
    assert mixers == {"lightning", "softmax"}

    # the planted leftovers are gone; only finished models are visible as runs
    assert not list((cache / "defaults" / defaults.BUILDING_DIR).iterdir())
    assert {row["name"]: row["status"] for row in list_runs(cache / "defaults")} == {
        "tiny-softmax": "finished", "tiny-hybrid": "finished"}

    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] == 1.0
    assert any("tiny-hybrid" in desc for _, desc in calls)


def test_second_call_reuses_the_cache_and_listing_never_trains(built, monkeypatch):
    cache, dirs, _ = built
    monkeypatch.setenv("STUDIO_CACHE", str(cache))
    stamps = {name: weights_of(d).stat().st_mtime_ns for name, d in dirs.items()}

    def no_training(*args, **kwargs):
        raise AssertionError("a built default model was trained again")

    monkeypatch.setattr(defaults, "_build", no_training)
    assert defaults.ensure_default_models(steps=STEPS) == dirs
    assert defaults.ensure_default_models(cache_dir=cache, names=["tiny-hybrid"], steps=STEPS) == {
        "tiny-hybrid": dirs["tiny-hybrid"]}
    assert {name: weights_of(d).stat().st_mtime_ns for name, d in dirs.items()} == stamps

    assert defaults.default_model_dirs(steps=STEPS) == dirs
    assert defaults.default_model_dirs() == {}  # the full recipe is a different model: not built here
    rows = {row["name"]: row for row in defaults.list_default_models(steps=STEPS)}
    assert all(row["ready"] for row in rows.values()) and rows["tiny-hybrid"]["mixers"] == "lightning+softmax"
    assert not any(row["ready"] for row in defaults.list_default_models())
    monkeypatch.setattr(defaults, "DEFAULTS_VERSION", defaults.DEFAULTS_VERSION + 1)  # a changed recipe
    assert defaults.default_model_dirs(steps=STEPS) == {}


@pytest.mark.parametrize("damage", ["delete weights", "garbage run.json"])
def test_damaged_cache_entry_is_rebuilt_identically(built, tmp_path, monkeypatch, damage):
    cache = tmp_path / "cache"
    shutil.copytree(built[0], cache)
    monkeypatch.setenv("STUDIO_CACHE", str(cache))
    run_dir = cache / "defaults" / "tiny-softmax"
    weights = weights_of(run_dir)
    original = weights.read_bytes()
    if damage == "delete weights":
        weights.unlink()
    else:
        (run_dir / "run.json").write_text("not json {")
    assert defaults.default_model_dirs(steps=STEPS).keys() == {"tiny-hybrid"}

    hybrid_stamp = weights_of(cache / "defaults" / "tiny-hybrid").stat().st_mtime_ns
    dirs = defaults.ensure_default_models(steps=STEPS)
    assert weights_of(dirs["tiny-softmax"]).read_bytes() == original  # seeded: the same weights again
    assert weights_of(dirs["tiny-hybrid"]).stat().st_mtime_ns == hybrid_stamp  # the intact one untouched
    assert torch.isfinite(load_model(dirs["tiny-softmax"])(torch.tensor([list(b"hello")]))).all()


def test_interrupted_build_leaves_nothing_that_looks_built(tmp_path):
    class Interrupted(Exception):
        pass

    def stop_early(fraction, desc=""):
        if "step 3/" in desc:
            raise Interrupted

    with pytest.raises(Interrupted):
        defaults.ensure_default_models(cache_dir=tmp_path, names=["tiny-softmax"], progress=stop_early, steps=STEPS)
    root = tmp_path / "defaults"
    assert not (root / "tiny-softmax").exists()
    assert not list((root / defaults.BUILDING_DIR).iterdir())
    assert defaults.default_model_dirs(cache_dir=tmp_path) == {}


def _build_in_child(cache: str, counter: str, barrier, results) -> None:
    """Child process: count trainings in `counter`, wait for the sibling, then ask for the model."""
    os.environ["STUDIO_CACHE"] = cache
    torch.set_num_threads(1)
    real_build = defaults._build

    def counted_build(*args, **kwargs):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real_build(*args, **kwargs)

    defaults._build = counted_build
    barrier.wait(timeout=60)
    dirs = defaults.ensure_default_models(names=["tiny-softmax"], steps=STEPS, threads=1)
    results.put(str(dirs["tiny-softmax"]))


def test_two_processes_asking_at_once_train_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    counter = tmp_path / "trainings.txt"
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path / "cache"), str(counter), barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    paths = {results.get(timeout=5) for _ in procs}
    assert paths == {str(tmp_path / "cache" / "defaults" / "tiny-softmax")}
    assert len(counter.read_text().split()) == 1  # the second process waited on the lock, then found it built
    assert torch.isfinite(load_model(paths.pop())(torch.tensor([list(b"abc")]))).all()


def test_cache_location_and_bad_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "env"))
    assert defaults.defaults_dir() == tmp_path / "env" / "defaults"
    assert defaults.defaults_dir(tmp_path / "arg") == tmp_path / "arg" / "defaults"
    monkeypatch.delenv("STUDIO_CACHE")
    assert defaults.cache_root() == Path.home() / ".cache" / "hybrid-attention-studio"
    with pytest.raises(ValueError, match="unknown default model"):
        defaults.ensure_default_models(cache_dir=tmp_path, names=["nope"])
    with pytest.raises(ValueError, match="steps"):
        defaults.ensure_default_models(cache_dir=tmp_path, steps=0)
    recipe = defaults.DEFAULT_MODELS["tiny-softmax"]
    assert recipe.fingerprint() == recipe.fingerprint(recipe.steps) != recipe.fingerprint(5)
