"""The README's table builders in bench/ read the grids' CSV files: checked on small hand-made files."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bench_meta():
    spec = importlib.util.spec_from_file_location("bench_meta", ROOT / "bench" / "bench_meta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adaptation_table_counts_the_seeds_that_beat_both_baselines(tmp_path):
    """reptile beats both baselines after one update on seed 0 only (on seed 1 joint training is better); the ratio to
    joint training is of the means over seeds; the columns are mean ± population std over seeds."""
    rows = ["algo,env,seed,updates,mean,std,n_tasks"]
    after_one = {"reptile": (300.0, 200.0), "joint": (250.0, 400.0), "random-init": (20.0, 30.0)}
    for algo, (seed0, seed1) in after_one.items():
        for seed, value in ((0, seed0), (1, seed1)):
            rows.append(f"{algo},fam,{seed},0,{value - 10},1.0,20")
            rows.append(f"{algo},fam,{seed},1,{value},1.0,20")
    (tmp_path / "adaptation.csv").write_text("\n".join(rows) + "\n")
    table = _bench_meta().adaptation_table(tmp_path)
    assert "| fam | reptile | 2 | 240.0 ± 50.0 | 250.0 ± 50.0 |" in table
    assert "| fam | reptile | 1 of 2 | 0.77 |" in table  # 250 / 325
    assert "| fam | joint | 1 of 2" not in table  # the baselines are not compared with themselves


def test_adaptation_table_with_named_baselines_and_the_expert_ceiling(tmp_path):
    """Baselines under other names, an expert row with its own (longer) updates, "—" where a method has no such row,
    and the share of the joint-to-expert gap closed after 3 updates, per seed: (method − joint) / (expert − joint), the
    expert's best over its updates being the ceiling."""
    rows = ["algo,env,seed,updates,mean,std,n_tasks"]
    table = {"fomaml-untuned": {1: (5.0, 5.0), 3: (40.0, 10.0)}, "joint-untuned": {1: (2.0, 2.0), 3: (20.0, 0.0)},
             "random-init-x": {1: (1.0, 1.0), 3: (10.0, 10.0)},
             "expert": {1: (1.0, 1.0), 3: (10.0, 10.0), 30: (45.0, 40.0), 100: (60.0, 35.0)}}  # the best: 60, 40
    for algo, by_k in table.items():
        for k, (seed0, seed1) in by_k.items():
            rows += [f"{algo},fam,0,{k},{seed0},1.0,20", f"{algo},fam,1,{k},{seed1},1.0,20"]
    (tmp_path / "adaptation.csv").write_text("\n".join(rows) + "\n")
    text = _bench_meta().adaptation_table(tmp_path, ("random-init-x", "joint-untuned"), "expert")
    assert "| fam | fomaml-untuned | 2 | 5.0 ± 0.0 | 25.0 ± 15.0 | — | — |" in text
    assert "| fam | expert | 2 | 1.0 ± 0.0 | 10.0 ± 0.0 | 42.5 ± 2.5 | 47.5 ± 12.5 |" in text
    # seed 0: (40 − 20) / (60 − 20) = 0.5; seed 1: (10 − 0) / (40 − 0) = 0.25
    assert "| fam | fomaml-untuned | 2 of 2 | 2.50 | 0.38 (1 of 2) |" in text
    assert "| fam | expert |" not in text.split("share of the joint-to-expert gap")[1]
