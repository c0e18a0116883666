"""make check-results: generated tables regenerate from their summary.json, an edit fails."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import check_results  # noqa: E402

SUMMARY = {
    "seeds": [0, 1],
    "inits": {
        "torch": {
            "adamw_norm_ratio": 0.5123,
            "methods": {
                "method=adamw": {
                    "val_loss": {"mean": 1.25, "std": 0.01, "n": 2},
                    "controlled_norm_ratio": {"mean": 0.51, "std": 0.02, "n": 2},
                },
                "auto_target=equilibrium": {
                    "val_loss": {"mean": 1.2, "std": 0.02, "n": 2},
                    "controlled_norm_ratio": {"mean": 0.6, "std": 0.01, "n": 2},
                    "minus_adamw": {"mean": -0.05, "ci95": [-0.1, 0.0]},
                },
                "method=adamcpr": {
                    "val_loss": {"mean": 1.3, "std": 0.02, "n": 2},
                    "controlled_norm_ratio": {"mean": 0.7, "std": 0.01, "n": 2},
                    "package": "pytorch-cpr 0.3.1",
                },
            },
        }
    },
}


@pytest.fixture
def tree(tmp_path, monkeypatch):
    (tmp_path / "results" / "auto").mkdir(parents=True)
    (tmp_path / "results" / "auto" / "summary.json").write_text(json.dumps(SUMMARY))
    readme = tmp_path / "results" / "auto" / "README.md"
    readme.write_text(
        "intro\n<!-- generated: auto_target_table results/auto/summary.json -->\nstale\n<!-- end generated -->\nend\n"
    )
    monkeypatch.setattr(check_results, "ROOT", tmp_path)
    return readme


def test_blocks_are_written_from_the_source_then_checked(tree, capsys):
    assert check_results.main([]) == 1  # the block does not match its source yet
    assert check_results.main(["--write"]) == 0
    text = tree.read_text()
    assert "| AdamW (λ = 0.1) | 2 | 1.2500 ± 0.0100 | — | — | 0.510 ± 0.020 |" in text
    assert "-0.0500 [-0.1000, +0.0000]" in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| AdamCPR (pytorch-cpr 0.3.1, inflection-point bound) | 2 |" in text  # a peer names its version
    assert check_results.main([]) == 0


def test_an_edited_number_fails_the_check_naming_the_file(tree, capsys):
    check_results.main(["--write"])
    tree.write_text(tree.read_text().replace("1.2500 ± 0.0100", "1.2400 ± 0.0100"))
    assert check_results.main([]) == 1
    assert "results/auto/README.md: the auto_target_table block" in capsys.readouterr().err


def test_verdict_blocks_take_their_words_and_margin_from_the_interval(tmp_path, monkeypatch):
    """A claim "within ≈ 0.01" can be written only as the interval decides it: the block's margin
    option reaches the verdict template, and an interval crossing it says "not decided"."""
    summary = {
        "protocol": {"reference": "adamw", "higher_is_better": True, "reported_beside": "test_loss"},
        "methods": {
            "adamw": {},
            "min": {
                "minus_adamw": {"mean": -0.0182, "ci95": [-0.0277, -0.0087], "seeds": [1, 2, 3]},
                "minus_adamw_test_loss": {"mean": 0.04, "ci95": [0.02, 0.06], "seeds": [1, 2, 3]},
            },
        },
    }
    (tmp_path / "results" / "ablation").mkdir(parents=True)
    (tmp_path / "results" / "ablation" / "summary.json").write_text(json.dumps(summary))
    readme = tmp_path / "results" / "ablation" / "README.md"
    marker = "<!-- generated: tune_verdicts results/ablation/summary.json margin=0.01 -->"
    readme.write_text(f"{marker}\nmin is within 0.01 of adamw\n<!-- end generated -->\n")
    monkeypatch.setattr(check_results, "ROOT", tmp_path)
    assert check_results.main([]) == 1  # the hand-written claim does not regenerate
    assert check_results.main(["--write"]) == 0
    lines = readme.read_text().splitlines()[1:-1]
    assert lines == [
        "- min is worse than adamw; whether within ±0.01 is not decided (the interval crosses ±0.01): "
        "-0.0182 [-0.0277, -0.0087], 3 seeds",
        "- min (test_loss) is worse than adamw: +0.0400 [+0.0200, +0.0600], 3 seeds",
    ]
    readme.write_text(readme.read_text().replace(marker, marker.replace("0.01", "0.005")))
    assert check_results.main([]) == 1  # another margin, other words
    for option, says in [("marg=0.01", "tune_verdicts takes no option 'marg'"), ("margin=one", "must be a number")]:
        readme.write_text(f"{marker.replace('margin=0.01', option)}\n<!-- end generated -->\n")
        with pytest.raises(SystemExit, match=says):  # a mistyped option is named, not ignored
            check_results.main([])


QUOTED = {
    "methods": {"adamw": {"val_loss": {"mean": 1.23684, "std": 0.01331}}},
    "ratio": 3.4765,
    "minus": {"mean": 0.00021, "ci95": [-0.011, 0.01149]},
}


@pytest.fixture
def quoted(tmp_path, monkeypatch):
    (tmp_path / "results" / "run").mkdir(parents=True)
    (tmp_path / "results" / "run" / "summary.json").write_text(json.dumps(QUOTED))
    doc = tmp_path / "REPRODUCTION.md"
    doc.write_text(
        "loss <!--q run methods:adamw:val_loss-->1.2368 ± 0.0133 at ratio <!--q run ratio-->3.48, "
        "difference <!--q run minus-->+0.0002 [−0.0110, +0.0115]; the study: <!--cited-->0.655; "
        "betas (0.9,0.98), 2 500 steps, λ = 0.1\n"
    )
    monkeypatch.setattr(check_results, "ROOT", tmp_path)
    return doc


def test_quoted_numbers_render_from_their_source_at_the_precision_written(quoted):
    assert check_results.main([]) == 0


@pytest.mark.parametrize(
    "edit",
    [("1.2368 ± 0.0133", "1.2369 ± 0.0133"), ("3.48", "3.47"), ("+0.0002 [", "+0.0003 ["), ("ratio-->", "ratios-->")],
)
def test_an_edited_quote_fails_naming_the_file_and_its_source(quoted, capsys, edit):
    quoted.write_text(quoted.read_text().replace(*edit))
    assert check_results.main([]) == 1
    assert "REPRODUCTION.md:" in capsys.readouterr().err
    assert check_results.main(["--write"]) == 1  # a quote's text is the author's: nothing rewrites it


def test_a_measurement_neither_quoted_nor_cited_fails(quoted, capsys):
    quoted.write_text(quoted.read_text() + "AdamC reached 1.2414 ± 0.0173.\n")
    assert check_results.main([]) == 1
    err = capsys.readouterr().err
    assert "1.2414 is neither quoted" in err and "0.0173 is neither quoted" in err


def test_the_repository_regenerates():
    assert check_results.main([]) == 0


def test_every_results_json_is_strict_json():
    """What the experiments guide promises: a non-finite number is written as null, never as the
    NaN or Infinity that strict parsers reject."""

    def refuse(constant):
        raise ValueError(f"holds {constant}")

    results = Path(__file__).resolve().parent.parent / "results"
    files = sorted(results.rglob("*.json"))
    assert files
    for path in files:
        try:
            json.loads(path.read_text(), parse_constant=refuse)
        except ValueError as error:
            raise AssertionError(f"{path.relative_to(results)} {error}") from None


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A results README quoting a run's own final.json and a benchmark file."""
    (tmp_path / "results" / "grid" / "adamw_s1").mkdir(parents=True)
    (tmp_path / "results" / "grid" / "adamw_s1" / "final.json").write_text(json.dumps({"val_loss": 1.23789}))
    (tmp_path / "results" / "bench").mkdir()
    bench = {
        "results": {
            "AdamWN": {
                "baseline": "torch AdamW fused",
                "ratio_to_torch_AdamW_fused": 0.9805,
                "ratio_by_round": [0.96, 0.86, 0.98],
            }
        }
    }
    (tmp_path / "results" / "bench" / "speed.json").write_text(json.dumps(bench))
    doc = tmp_path / "results" / "grid" / "README.md"
    doc.write_text(
        "seed 1 <!--q grid/adamw_s1 val_loss-->1.2379, "
        "step <!--q bench/speed.json results:AdamWN:ratio_to_torch_AdamW_fused-->0.98×; "
        "settings `--set lr=0.0009333\n--set weight_decay=0.05` are code\n"
        "<!-- generated: step_speed_table results/bench/speed.json -->\n<!-- end generated -->\n"
    )
    monkeypatch.setattr(check_results, "ROOT", tmp_path)
    return doc


def test_per_seed_and_benchmark_numbers_quote_their_own_files(runs, capsys):
    assert check_results.main(["--write"]) == 0 and check_results.main([]) == 0
    assert "| AdamWN | torch AdamW fused | 0.98 | 0.86–0.98 |" in runs.read_text()
    for edit in [("1.2379", "1.2378"), ("-->0.98×", "-->0.97×")]:
        good = runs.read_text()
        runs.write_text(good.replace(*edit))
        assert check_results.main([]) == 1
        runs.write_text(good)


def test_every_document_quotes_its_measurements_and_code_is_exempt(runs, capsys):
    assert check_results.main(["--write"]) == 0
    runs.write_text(runs.read_text() + "AdamC ended at 1.2414.\n")
    assert check_results.main([]) == 1
    err = capsys.readouterr().err
    assert "results/grid/README.md: 1.2414 is neither quoted" in err and "0.0009333" not in err


def test_the_evidence_table_says_only_what_each_interval_allows():
    from normctl_lab.tune_report import evidence_table

    def tuned(reference, higher, reported, **diffs):
        protocol = {"reference": reference, "higher_is_better": higher, "reported_on": reported}
        return {"protocol": protocol, "methods": {m: {f"minus_{reference}": d} for m, d in diffs.items()}}

    loss = tuned("adamw", False, "test_loss", adamc={"mean": -0.02, "ci95": [-0.03, -0.01]},
                 adamwn={"mean": 0.01, "ci95": [-0.01, 0.03]})  # fmt: skip
    acc = tuned("sgd", True, "test_acc", adamc={"mean": -0.02, "ci95": [-0.03, -0.01]})
    # a classifier's held-out loss beside its accuracy: level in accuracy can hide a worse loss
    acc["protocol"]["reported_beside"] = "test_loss"
    acc["methods"]["adamc"]["minus_sgd_test_loss"] = {"mean": 0.05, "ci95": [0.04, 0.06]}
    columns = [{"name": "LM", "summary": "a"}, {"name": "CNN", "summary": "b"}]
    text = evidence_table(columns, [loss, acc], {"adamc": "AdamC", "adamwn": "AdamWN", "lion": "Lion"})
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "LM (test loss)" in rows["method"] and "CNN (test acc)" in rows["method"]
    # lower loss is better, lower accuracy worse: the same interval reads both ways
    assert rows["AdamC"] == "| AdamC | better (-0.020) | worse (-0.020), loss worse (+0.050) |"
    assert rows["AdamWN"] == "| AdamWN | level (+0.010) | — |"
    assert "Lion" not in rows  # in no comparison
    assert "tuned AdamW or SGD" in text


def test_no_evidence_cell_rests_silently_on_a_range_edge():
    from normctl_lab.tune_report import evidence_table

    base = {"task": "gpt", "steps": 1500}

    def tuned(reference_edge, **rows):
        protocol = {"reference": "adamw", "higher_is_better": False, "reported_on": "test_loss", "base": base}
        protocol["selected_on"] = "selection_loss"
        methods = {"adamw": {"at_edge": ["lr"] if reference_edge else [], "test_loss_by_seed": {"1": 1.0, "2": 1.2}}}
        for method, (edge, searched, scores, diff) in rows.items():
            methods[method] = {
                "at_edge": ["lr"] if edge else [],
                "search": [
                    {"run": f"{method}_c0", "selection_loss": searched},
                    {"run": f"{method}_c1", "selection_loss": 0.1},
                ],
                "selected": f"{method}_c0",
                "test_loss_by_seed": scores,
                "minus_adamw": diff,
            }
        return {"protocol": protocol, "methods": methods}

    worse, level = {"mean": 0.3, "ci95": [0.2, 0.4]}, {"mean": 0.0, "ci95": [-1, 1]}
    column = tuned(
        False,
        hyperball=(True, 2.0, {"1": 1.3, "2": 1.5}, worse),
        adamc=(True, 1.5, {"1": 1.3, "2": 1.5}, worse),
        muon=(True, 1.5, {"1": 1.3, "2": 1.5}, worse),
    )
    # the range checks searched around the edges. HyperBall's selection scores better there (1.9
    # against 2.0 on the selection split) and stands: its seeds 1 and 2 score 1.1 and 1.2
    # against the column's AdamW's 1.0 and 1.2, differences 0.1 and 0.0. Muon's scores worse
    # (1.7 against 1.5): the first selection stands and the edge did not decide.
    hyperball_check = tuned(True, hyperball=(False, 1.9, {"1": 1.1, "2": 1.2, "3": 9.0}, level))
    muon_check = tuned(True, muon=(False, 1.7, {"1": 1.0, "2": 1.2}, level))
    columns = [{"name": "LM", "summary": "a"}, {"name": "LM, reference at an edge", "summary": "b"}]
    labels = {"hyperball": "HB", "adamc": "AdamC", "muon": "Muon"}
    checks = [{"hyperball": hyperball_check, "muon": muon_check}, {}]
    text = evidence_table(columns, [column, tuned(True, adamc=(False, 1.0, {}, worse))], labels, checks)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["HB"] == "| HB | level (+0.050) ‡ | — |"  # paired on seeds 1-2 only, the check's seed 3 unpaired
    assert rows["Muon"] == "| Muon | worse (+0.300) ‡ | — |"
    assert rows["AdamC"] == "| AdamC | worse (+0.300) † | worse (+0.300) |"  # at an edge with no check
    assert rows["method"].endswith("LM, reference at an edge (test loss) † |")
    assert "‡: a range check searched around an edge" in text and "†: selected at an edge" in text
    # a check of the reference: its selection scores better there (1.4 against 1.5), so every cell
    # pairs against the check's AdamW, whose seeds score 0.9 and 1.1 (AdamC's differences 0.4)
    reference_column = tuned(True, adamc=(False, 1.0, {"1": 1.3, "2": 1.5}, worse))
    reference_column["methods"]["adamw"].update(
        search=[{"run": "adamw_c0", "selection_loss": 1.5}], selected="adamw_c0"
    )
    reference_check = tuned(False)
    reference_check["methods"]["adamw"].update(
        search=[{"run": "adamw_c4", "selection_loss": 1.4}], selected="adamw_c4", test_loss_by_seed={"1": 0.9, "2": 1.1}
    )
    text = evidence_table(columns[1:], [reference_column], {"adamc": "AdamC"}, [{"adamw": reference_check}])
    assert "| AdamC | worse (+0.400) ‡ |" in text and "(test loss) |" in text  # the reference's edge checked: no †
    # a check on another task cannot be paired seed by seed: refused, not silently mixed
    elsewhere = {**hyperball_check, "protocol": {**hyperball_check["protocol"], "base": {**base, "steps": 3000}}}
    with pytest.raises(ValueError, match="range check for 'hyperball' is not comparable with its comparison: its base"):
        evidence_table(columns[:1], [column], {"hyperball": "HB"}, [{"hyperball": elsewhere}])
    # nor one selected over other search seeds: a mean over three seeds is not one seed's best
    three_seeds = {**hyperball_check, "protocol": {**hyperball_check["protocol"], "search_seeds": [0, 1, 2]}}
    with pytest.raises(ValueError, match="its search_seeds differ"):
        evidence_table(columns[:1], [column], {"hyperball": "HB"}, [{"hyperball": three_seeds}])
    # a classifier's check pairs the held-out loss beside the accuracy in the same way
    classifier, classifier_check = tuned(False), tuned(True, hyperball=(False, 1.9, {}, level))
    for summary in (classifier, classifier_check):
        summary["protocol"].update(reported_on="test_acc", higher_is_better=True, reported_beside="test_loss")
        summary["protocol"]["selected_on"] = "selection_acc"
    classifier["methods"]["adamw"].update(
        test_acc_by_seed={"1": 0.90, "2": 0.80}, test_loss_by_seed={"1": 0.3, "2": 0.5}
    )
    edge_run = {"at_edge": ["lr"], "search": [{"run": "c0", "selection_acc": 0.5}], "selected": "c0"}
    classifier["methods"]["hyperball"] = {**edge_run, "minus_adamw": worse}
    classifier_check["methods"]["hyperball"] = {
        **{"at_edge": [], "search": [{"run": "c3", "selection_acc": 0.6}], "selected": "c3"},
        **{"test_acc_by_seed": {"1": 0.92, "2": 0.84}, "test_loss_by_seed": {"1": 0.4, "2": 0.6}},
    }
    cell = evidence_table(columns[:1], [classifier], {"hyperball": "HB"}, [{"hyperball": classifier_check}])
    assert "| HB | level (+0.030), loss worse (+0.100) ‡ |" in cell  # accuracy +0.02 and +0.04, loss +0.1 twice
    # a diverged final run (stored as null) pairs as the tuning pairs it, NaN: not decided, no crash
    diverged = {**hyperball_check, "methods": {**hyperball_check["methods"]}}
    diverged["methods"]["hyperball"] = {**diverged["methods"]["hyperball"], "test_loss_by_seed": {"1": None, "2": 1.2}}
    text = evidence_table(columns[:1], [column], {"hyperball": "HB"}, [{"hyperball": diverged}])
    assert "| HB | diverged (not decided) ‡ |" in text
    # without marks, no footnote
    plain = evidence_table(columns[:1], [tuned(False, adamc=(False, 1.0, {}, worse))], {"adamc": "AdamC"})
    assert "‡" not in plain and "†" not in plain
