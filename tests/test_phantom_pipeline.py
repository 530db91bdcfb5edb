"""The generative pipeline end to end on real captures (data/phantom/fixtures): dataset split, tiny models of every
backbone trained a few steps, generated traces legal and replayable, conditioning (link parameters never seen in
training), determinism, checkpoints and resume, DDP on gloo against one process, streaming with flat memory,
evaluation, bad input."""

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from phantom.gen.backbones import get_backbone, names
from phantom.gen.dataset import Dataset, DatasetConfig, build
from phantom.gen.hostside import check_host_side
from phantom.gen.sample import GenerateConfig, generate, resolve_condition
from phantom.gen.train import TrainConfig, load_checkpoint, train
from phantom.rules import check_file
from phantom.trace import load_any_columns, read_trace

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "data" / "phantom" / "fixtures"
PY = sys.executable
TINY = {"image": {"window": 16, "d": 16, "z_dim": 8, "mixtures": 2, "kl_warmup": 2},
        "transformer": {"window": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
        "iid": {}, "stitch": {"min_snippet": 16, "max_snippet": 64}}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    build([FIX], d, progress=False)
    return d


@pytest.fixture(scope="module")
def ckpts(ds, tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    out = {}
    for b in names():
        p = d / f"{b}.pt"
        train(ds, p, TrainConfig(backbone=b, steps=6, batch=4, eval_every=3, eval_batches=1, threads=1),
              TINY[b], progress=False)
        out[b] = p
    return out


def run_cli(*args, env=None):
    return subprocess.run([PY, "-m", "phantom", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


# data --------------------------------------------------------------------------------------------------------------
def test_dataset_split(ds):
    d = Dataset.load(ds)
    split = {t["name"]: t["split"] for t in d.meta["traces"]}
    assert split["mixed__base__s1"] == split["rx_heavy__alt__s2"] == "train"
    assert split["mixed__base__s3"] == split["rx_heavy__alt__s3"] == "test_same"
    assert split["mixed__unseen__s3"] == split["rx_heavy__unseen__s3"] == "test_unseen"
    assert {n for n, s in split.items() if s == "test_other"} == {n for n in split if n.startswith("numa")}
    assert d.space.scenarios == ("mixed", "rx_heavy")
    assert d.tokens.dtype == np.int16 and len(d.tokens) == d.starts[-1] == sum(t["records"] for t in d.meta["traces"])
    assert d.meta["priors"]["device_id"] == 0x100 and set(d.meta["templates"]) == {"mixed", "rx_heavy"}


def test_dataset_fingerprint_follows_the_data(ds, tmp_path):
    assert Dataset.load(ds).fingerprint == build([FIX], tmp_path / "again", progress=False)["fingerprint"]
    other = build([FIX], tmp_path / "seeds", DatasetConfig(train_seeds=(1,)), progress=False)
    assert other["fingerprint"] != Dataset.load(ds).fingerprint
    sub = tmp_path / "sub"
    sub.mkdir()
    for f in FIX.glob("mixed__base__s*"):
        shutil.copy(f, sub)
    with pytest.raises(ValueError, match="held-out scenario 'numa' is in none of the traces"):
        build([sub], tmp_path / "fewer", progress=False)
    assert not (tmp_path / "fewer").exists()
    fewer = build([sub], tmp_path / "fewer", DatasetConfig(heldout_scenarios=()), progress=False)
    assert fewer["fingerprint"] != Dataset.load(ds).fingerprint


# every backbone: trained, generating legal and replayable traces ----------------------------------------------------
@pytest.mark.parametrize("backbone", ["image", "transformer", "iid", "stitch"])
def test_generated_trace_is_legal_and_replayable(ckpts, tmp_path, backbone):
    ck = load_checkpoint(ckpts[backbone])
    cond = resolve_condition(ck, "mixed")
    out = tmp_path / "gen.jsonl.gz"
    rep = generate(ck, out, cond, GenerateConfig(tlps=1200, seed=3, progress=False))
    assert rep.generated == 1200 and rep.records > 0
    chk = check_file(out)
    assert chk.errors == 0 and chk.warnings == 0, chk.format()
    assert check_host_side(out) == []
    h, recs = read_trace(out)
    assert h.extra["generated"]["backbone"] == backbone and h.mac_frames == "gen.mac.jsonl.gz"
    st = rep.stats
    assert st.records_in == 1200 and st.records_out == len(recs)


def test_npz_output_and_raw_mode(ckpts, tmp_path):
    ck = load_checkpoint(ckpts["image"])
    cond = resolve_condition(ck, "rx_heavy")
    raw = generate(ck, tmp_path / "raw.npz", cond, GenerateConfig(tlps=900, calibrate=False, progress=False))
    tc = load_any_columns(tmp_path / "raw.npz")
    assert raw.records == len(tc) == 900 and raw.stats is None and not (tmp_path / "raw.mac.jsonl.gz").exists()
    cal = generate(ck, tmp_path / "cal.npz", cond, GenerateConfig(tlps=900, progress=False))
    assert check_file(tmp_path / "cal.npz").ok and check_host_side(tmp_path / "cal.npz") == []
    assert cal.records == len(load_any_columns(tmp_path / "cal.npz"))


def test_generation_is_deterministic(ckpts, tmp_path):
    for b in ("image", "transformer"):
        ck = load_checkpoint(ckpts[b])
        cond = resolve_condition(ck, "mixed")
        a = generate(ck, tmp_path / f"{b}_a.jsonl.gz", cond, GenerateConfig(tlps=400, seed=7, progress=False))
        c = generate(ck, tmp_path / f"{b}_b.jsonl.gz", cond, GenerateConfig(tlps=400, seed=7, progress=False))
        generate(ck, tmp_path / f"{b}_c.jsonl.gz", cond, GenerateConfig(tlps=400, seed=8, progress=False))
        ra, rb, rd = (read_trace(tmp_path / f"{b}_{x}.jsonl.gz")[1] for x in "abc")
        assert ra == rb, b
        assert ra != rd, b
        assert a.records == c.records


# host set-up (the regression's stimulus) -----------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["image", "stitch"])
def test_host_setup_is_applied(ckpts, tmp_path, backbone):
    """Pinned registers written before any queue runs and never rewritten otherwise, buffers offset in their slots,
    the host model in the header; still legal and replayable."""
    import struct

    from phantom.gen.condition import HostSetup
    from phantom.memmap import MemoryMap, RegionKind
    from phantom.trace import Direction, SemClass

    ck = load_checkpoint(ckpts[backbone])
    model = {"name": "test-host", "cpl_buffer": 16}
    host = HostSetup(model=model, registers={"REG_IRQ_COAL_COUNT": 1, "REG_DMA_CREDITS": 16 | 160 << 16},
                     buffer_offset=4096 - 200)
    out = tmp_path / "host.jsonl.gz"
    generate(ck, out, resolve_condition(ck, "mixed"), GenerateConfig(tlps=1500, seed=2, progress=False), host=host)
    assert check_file(out).ok and check_host_side(out) == []
    h, recs = read_trace(out)
    assert h.host["model"] == model and h.extra["generated"]["host_setup"]["buffer_offset"] == 3896
    regs = {v: k for k, v in h.device["registers"].items()}
    mm = MemoryMap.from_json(h.memory_map)
    bar = mm.of_kind(RegionKind.BAR)[0].base
    writes = [(regs.get(r.address - bar), int.from_bytes(r.payload[:4], "little"), i) for i, r in enumerate(recs)
              if r.dir == Direction.DOWN and r.cls == SemClass.MMIO_WRITE and r.payload]
    first_dma = next(i for i, r in enumerate(recs) if r.dir == Direction.UP and r.cls == SemClass.DESC_READ)
    credits = [(v, i) for n, v, i in writes if n == "REG_DMA_CREDITS"]
    assert credits and all(v == 16 | 160 << 16 for v, _ in credits) and credits[0][1] < first_dma
    coal = [v for n, v, _ in writes if n == "REG_IRQ_COAL_COUNT"]
    assert coal and set(coal) == {1}
    bufs = []
    for r in recs:
        if r.dir == Direction.DOWN and r.type.is_completion and r.payload and len(r.payload) % 16 == 0:
            for k in range(0, len(r.payload), 16):
                a, n, _ = struct.unpack_from("<QII", r.payload, k)
                for ring, data in ((RegionKind.TX_RING, RegionKind.TX_DATA), (RegionKind.RX_RING, RegionKind.RX_DATA)):
                    reg, slots = mm.of_kind(data)[0], mm.of_kind(ring)[0].size // 16
                    if reg.base <= a < reg.base + reg.size:
                        bufs.append((a - reg.base) % (reg.size // slots))
    assert bufs and set(bufs) == {3896}, sorted(set(bufs))[:5]
    with pytest.raises(ValueError, match="REG_NOPE"):
        generate(ck, tmp_path / "x.jsonl.gz", resolve_condition(ck, "mixed"), GenerateConfig(tlps=50, progress=False),
                 host=HostSetup(registers={"REG_NOPE": 1}))
    with pytest.raises(ValueError, match="buffer_offset"):
        HostSetup(buffer_offset=6)


# conditioning --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["image", "transformer"])
def test_unseen_link_parameters_are_respected(ckpts, tmp_path, backbone):
    """MPS 512, MRRS 1024, RCB 128 and 5-bit tags: no training capture of the fixtures has them."""
    ck = load_checkpoint(ckpts[backbone])
    seen = {(t["mps"], t["mrrs"], t["rcb"], t["tag_width"]) for t in ck["templates"].values()}
    link = {"mps": 512, "mrrs": 1024, "rcb": 128, "tag_width": 5}
    assert tuple(link.values()) not in seen
    cond = resolve_condition(ck, "mixed", link=link)
    out = tmp_path / "u.jsonl.gz"
    generate(ck, out, cond, GenerateConfig(tlps=1500, seed=2, progress=False))
    h, recs = read_trace(out)
    assert (h.mps, h.mrrs, h.rcb, h.tag_width) == (512, 1024, 128, 5)
    rep = check_file(out)
    assert rep.errors == 0 and rep.warnings == 0, rep.format()
    assert max(r.length * 4 for r in recs if r.type.is_mem_write or r.type.is_completion) <= 512
    assert max(r.length * 4 for r in recs if r.type.is_mem_read and r.dir == 1) <= 1024
    assert max(r.tag for r in recs if r.type.is_non_posted) < 32
    if backbone == "transformer":
        # the legality masks alone already keep the backbone's own records legal (one stream: the masks hold
        # within a stream; where parallel streams are joined, calibration repairs)
        raw = tmp_path / "raw.jsonl.gz"
        generate(ck, raw, cond, GenerateConfig(tlps=600, seed=2, calibrate=False, batch=1, progress=False))
        rr = check_file(raw)
        for rule in ("wr_mps", "rd_mrrs", "tag_width", "cpl_mps", "mem_4kb", "be_1dw", "be_multi", "be_contig",
                     "cpl_unexpected", "cpl_byte_count", "cpl_lower_addr", "cpl_rcb", "cpl_overrun", "tlp_poisoned",
                     "cpl_error", "attr_ns", "ord_ro_flag"):
            assert rr.counts[rule] == 0, (rule, rr.format())


def test_condition_resolution(ckpts):
    ck = load_checkpoint(ckpts["iid"])
    c = resolve_condition(ck, "rx_heavy")
    assert c.scenario == "rx_heavy" and c.knobs.tx_fraction < 0.3
    c2 = resolve_condition(ck, None, knobs={"tx_fraction": 0.9}, link={"mps": 128})
    assert c2.scenario == "" and c2.knobs.tx_fraction == 0.9 and c2.link.mps == 128
    with pytest.raises(ValueError, match="unknown scenario: 'numa'"):
        resolve_condition(ck, "numa")
    # without a scenario the header (host, memory map, Device Control) is the nearest training scenario's
    from phantom.gen.sample import header_for, nearest_scenario

    rx = resolve_condition(ck, "rx_heavy")
    mixed = resolve_condition(ck, "mixed")
    assert nearest_scenario(ck, resolve_condition(ck, None, knobs=vars(rx.knobs))) == "rx_heavy"
    assert nearest_scenario(ck, resolve_condition(ck, None, knobs=vars(mixed.knobs))) == "mixed"
    h = header_for(ck, resolve_condition(ck, None, knobs=vars(rx.knobs), link={"mps": 512}))
    assert h.scenario == "generated" and h.mps == 512
    assert h.memory_map == ck["templates"]["rx_heavy"]["memory_map"]


# training: deterministic, resumable, DDP ------------------------------------------------------------------------------
def _weights(ck):
    return {k: v.clone() for k, v in ck["model"].items()}


def test_training_is_deterministic_and_resumes(ds, tmp_path):
    cfg = dict(backbone="image", batch=4, eval_every=2, eval_batches=1, threads=1)
    a = train(ds, tmp_path / "a.pt", TrainConfig(steps=4, **cfg), TINY["image"], progress=False)
    b = train(ds, tmp_path / "b.pt", TrainConfig(steps=4, **cfg), TINY["image"], progress=False)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    wa, wb = _weights(a), _weights(b)
    assert all((wa[k] == wb[k]).all() for k in wa)
    train(ds, tmp_path / "c.pt", TrainConfig(steps=2, **cfg), TINY["image"], progress=False)
    c = train(ds, tmp_path / "c.pt", TrainConfig(steps=4, **cfg), None, resume=True, progress=False)
    assert c["step"] == 4 and [h["loss"] for h in c["history"]] == [h["loss"] for h in a["history"]]
    wc = _weights(c)
    assert all(np.allclose(wa[k].numpy(), wc[k].numpy(), atol=1e-6) for k in wa)


def test_checkpoint_is_self_contained(ds, ckpts, tmp_path):
    ck = load_checkpoint(ckpts["image"])
    for k in ("model_args", "train_config", "step", "encoding", "conditions", "priors", "templates", "dataset",
              "scenario_defaults", "optimizer", "rng", "history"):
        assert k in ck, k
    assert ck["dataset"]["fingerprint"] == Dataset.load(ds).fingerprint
    moved = tmp_path / "elsewhere.pt"
    shutil.copy(ckpts["image"], moved)
    r = run_cli("generate", "--ckpt", moved, "--out", tmp_path / "g.jsonl.gz", "--tlps", 300, "--scenario", "mixed",
                "--quiet")
    assert r.returncode == 0, r.stderr
    assert "300 generated by image" in r.stdout


def test_resume_refuses_another_dataset(ds, ckpts, tmp_path):
    p = tmp_path / "x.pt"
    shutil.copy(ckpts["image"], p)
    other = build([FIX], tmp_path / "ds2", DatasetConfig(train_seeds=(2,)), progress=False)
    assert other
    with pytest.raises(ValueError, match="trained on dataset"):
        train(tmp_path / "ds2", p, TrainConfig(backbone="image", steps=8), None, resume=True, progress=False)


def test_ddp_two_gloo_processes_match_one_process(ds, tmp_path):
    common = ["train", "--dataset", ds, "--backbone", "image", "--steps", 3, "--batch", 4, "--eval-every", 3,
              "--threads", 1, "--quiet"] + sum((["--set", f"{k}={json.dumps(v)}"] for k, v in TINY["image"].items()), [])
    one = run_cli(*common, "--out", tmp_path / "one.pt")
    assert one.returncode == 0, one.stderr
    two = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m",
                          "phantom", *map(str, common), "--out", tmp_path / "two.pt"],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = load_checkpoint(tmp_path / "one.pt"), load_checkpoint(tmp_path / "two.pt")
    la, lb = [h["loss"] for h in a["history"]], [h["loss"] for h in b["history"]]
    assert len(la) == len(lb) == 3
    assert np.allclose(la, lb, rtol=1e-4, atol=1e-4), (la, lb)
    assert all(np.allclose(a["model"][k].numpy(), b["model"][k].numpy(), atol=1e-4) for k in a["model"])


# streaming ------------------------------------------------------------------------------------------------------------
def test_generation_streams_with_flat_memory(ckpts, tmp_path):
    ck = load_checkpoint(ckpts["iid"])
    cond = resolve_condition(ck, "mixed")
    peaks = []
    for n in (40_000, 200_000):
        tracemalloc.start()
        generate(ck, tmp_path / f"m{n}.npz", cond, GenerateConfig(tlps=n, calibrate=False, progress=False))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert len(load_any_columns(tmp_path / "m200000.npz")) == 200_000
    assert peaks[1] < 1.3 * peaks[0], peaks


# evaluation -----------------------------------------------------------------------------------------------------------
def test_evaluate_cli_table_and_plots(ckpts, tmp_path):
    ck = load_checkpoint(ckpts["stitch"])
    cond = resolve_condition(ck, "mixed")
    generate(ck, tmp_path / "s.jsonl.gz", cond, GenerateConfig(tlps=800, calibrate=False, progress=False))
    generate(ck, tmp_path / "sc.jsonl.gz", cond, GenerateConfig(tlps=800, progress=False))
    r = run_cli("evaluate", "--real", FIX / "mixed__base__s3.jsonl.gz", "--gen", f"stitch={tmp_path / 's.jsonl.gz'}",
                f"stitch+cal={tmp_path / 'sc.jsonl.gz'}", "--plots", tmp_path / "plots", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    for word in ("FD", "JSD mean", "W1 dt ns", "ACF err", "viol/TLP", "read latency p50 (ns)",
                 "calibration's improvement"):
        assert word in r.stdout, word
    res = json.loads((tmp_path / "r.json").read_text())
    assert [s["name"] for s in res["systems"]] == ["stitch", "stitch+cal"]
    assert res["systems"][1]["violation_rate"] == 0
    for f in ("fd.png", "task_errors.png", "interarrival_cdf.png", "kinds.png"):
        assert (tmp_path / "plots" / f).stat().st_size > 1000, f


# bad input: one clear line each ------------------------------------------------------------------------------------------
def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_bad_checkpoints(ckpts, tmp_path):
    out = tmp_path / "o.jsonl.gz"
    _one_line_error(run_cli("generate", "--ckpt", tmp_path / "none.pt", "--out", out), "none.pt", "no such file")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    _one_line_error(run_cli("generate", "--ckpt", tmp_path / "junk.pt", "--out", out), "junk.pt", "not a Phantom")
    data = Path(ckpts["image"]).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _one_line_error(run_cli("generate", "--ckpt", tmp_path / "cut.pt", "--out", out), "cut.pt", "not a readable")


def test_bad_conditions_and_names(ckpts, tmp_path, ds):
    ck = ckpts["image"]
    out = tmp_path / "o.jsonl.gz"
    _one_line_error(run_cli("generate", "--ckpt", ck, "--out", out, "--scenario", "numa"), "unknown scenario: 'numa'")
    _one_line_error(run_cli("generate", "--ckpt", ck, "--out", out, "--mps", 384), "mps", "384")
    _one_line_error(run_cli("generate", "--ckpt", ck, "--out", out, "--rcb", 96), "rcb", "96")
    _one_line_error(run_cli("generate", "--ckpt", ck, "--out", out, "--tag-width", 7), "tag_width", "7")
    _one_line_error(run_cli("generate", "--ckpt", ck, "--out", out, "--tx-fraction", 2), "tx_fraction")
    _one_line_error(run_cli("generate", "--ckpt", ck, "--out", tmp_path / "o.txt"), "o.txt")
    _one_line_error(run_cli("train", "--dataset", ds, "--backbone", "gan", "--out", tmp_path / "g.pt"),
                    "unknown backbone: 'gan'")
    with pytest.raises(ValueError, match="unknown backbone: 'gan'"):
        get_backbone("gan")


def _in_process_error(capsys, *argv) -> str:
    from phantom.__main__ import main

    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_bad_devices_and_output_paths(ckpts, tmp_path, ds, capsys):
    ck = ckpts["image"]
    out = tmp_path / "o.npz"
    gen = ("generate", "--ckpt", ck, "--tlps", 50, "--quiet")
    assert "--device must be cpu, cuda or cuda:N, got 'bogus'" in _in_process_error(capsys, *gen, "--out", out,
                                                                                     "--device", "bogus")
    assert "--device cuda:7: this machine has" in _in_process_error(capsys, *gen, "--out", out, "--device", "cuda:7")
    assert "--device must be cpu" in _in_process_error(capsys, "train", "--dataset", ds, "--backbone", "iid",
                                                       "--out", tmp_path / "t.pt", "--device", "gpu")
    (tmp_path / "d.npz").mkdir()
    assert f"{tmp_path / 'd.npz'}: is a directory" in _in_process_error(capsys, *gen, "--out", tmp_path / "d.npz")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["d.npz"]   # nothing left behind
    assert "/proc/x.npz: cannot be written" in _in_process_error(capsys, *gen, "--out", "/proc/x.npz")
    before = Path(ck).read_bytes()
    assert "the exported checkpoint is the input file" in _in_process_error(capsys, "export", "--ckpt", ck,
                                                                            "--out", ck)
    assert Path(ck).read_bytes() == before
    assert "is a directory, not a checkpoint file" in _in_process_error(capsys, "export", "--ckpt", ck,
                                                                        "--out", tmp_path / "d.npz")
    assert "/proc/e.pt" in _in_process_error(capsys, "export", "--ckpt", ck, "--out", "/proc/e.pt")
    assert "FeatureConfig.steps" in _in_process_error(capsys, "features", "--dataset", ds, "--out",
                                                      tmp_path / "f.pt", "--steps", 0)
    tr = ("train", "--dataset", ds, "--backbone", "image", "--out", tmp_path / "t.pt", "--quiet")
    assert "--set width: not a model argument of the image backbone" in _in_process_error(capsys, *tr, "--set",
                                                                                          "width=3")
    assert "TrainConfig.threads must be >= 0, got -2" in _in_process_error(capsys, *tr, "--threads", -2)


def test_the_same_trace_twice_and_malformed_sets_refused(tmp_path, capsys):
    one = FIX / "mixed__base__s1.jsonl.gz"
    assert "trace given twice" in _in_process_error(capsys, "dataset", FIX, FIX, "--out", tmp_path / "d")
    assert f"{one}: trace given twice" in _in_process_error(capsys, "dataset", FIX, one, "--out", tmp_path / "d")
    assert "train_seeds: 1 is given twice" in _in_process_error(capsys, "dataset", FIX, "--train-seeds", "1,1",
                                                               "--out", tmp_path / "d")
    assert "heldout_scenarios: 'numa' is given twice" in _in_process_error(capsys, "dataset", FIX, "--heldout",
                                                                          "numa,numa", "--out", tmp_path / "d")
    assert not (tmp_path / "d").exists()
    ev = ("evaluate", "--real", one)
    assert "trace given twice" in _in_process_error(capsys, *ev, "--gen", f"g={one},{one}")
    assert "trace given twice" in _in_process_error(capsys, "evaluate", "--real", one, one, "--gen", one)
    for bad in ("=" + str(one), "g=", f"{one},"):
        assert "expected NAME=TRACE" in _in_process_error(capsys, *ev, "--gen", bad)
    assert "the set name 'g' is already used" in _in_process_error(capsys, *ev, "--gen", f"g={one}", f"g={one}")
    assert "the set name 'real' is already used" in _in_process_error(capsys, *ev, "--gen", f"real={one}")
    assert "--json: expected a file name" in _in_process_error(capsys, *ev, "--gen", one, "--json", "")
    assert f"--json {tmp_path}: is a folder" in _in_process_error(capsys, *ev, "--gen", one, "--json", tmp_path)
    assert "its folder" in _in_process_error(capsys, *ev, "--gen", one, "--json", tmp_path / "no" / "x.json")
    (tmp_path / "f").write_text("x")
    assert "--plots" in _in_process_error(capsys, *ev, "--gen", one, "--plots", tmp_path / "f")


def test_traces_of_other_schema_versions(tmp_path):
    import gzip

    src = FIX / "mixed__base__s1.jsonl.gz"
    lines = gzip.open(src, "rt").read().splitlines()
    head = json.loads(lines[0])
    v1 = {"schema": "phantom.trace", "version": 1, "mps": 256, "mrrs": 512, "rcb": 64}
    (tmp_path / "old").mkdir()
    with gzip.open(tmp_path / "old" / "old.jsonl.gz", "wt") as f:
        f.write("\n".join([json.dumps(v1)] + lines[1:]) + "\n")
    _one_line_error(run_cli("dataset", tmp_path / "old", "--out", tmp_path / "d1"), "old.jsonl.gz", "memory map")
    head["version"] = 99
    (tmp_path / "new").mkdir()
    with gzip.open(tmp_path / "new" / "new.jsonl.gz", "wt") as f:
        f.write("\n".join([json.dumps(head)] + lines[1:]) + "\n")
    _one_line_error(run_cli("dataset", tmp_path / "new", "--out", tmp_path / "d2"), "new.jsonl.gz", "version 99")
    _one_line_error(run_cli("dataset", tmp_path / "missing", "--out", tmp_path / "d3"), "missing")
    _one_line_error(run_cli("train", "--dataset", tmp_path / "new", "--out", tmp_path / "x.pt"), "not a Phantom dataset")


def test_old_commands_still_work():
    r = run_cli("rules")
    assert r.returncode == 0 and "nic_irq_cpl" in r.stdout
    r = run_cli("check", FIX / "mixed__base__s1.jsonl.gz")
    assert r.returncode == 0 and "0 errors" in r.stdout
