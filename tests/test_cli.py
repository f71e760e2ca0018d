"""The command line as a newcomer meets it: ``--help`` and argument errors of every subcommand without the heavy
imports, every option explained, the vocabularies offered as choices the same ones the code implements, defaults
derived from the machine's cores, and the SUPERB chart legible when bars are equal."""

import json
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest
import torch

from s3prl_distill import options
from s3prl_distill.cli import assemble

HEAVY = ("torch", "pydantic")

# For each subcommand: --help, then an unknown option (an argument error, which prints the usage and so reads every
# option's choices, without running the command). After each, the heavy modules present so far are reported, so a
# failure names the first command that imported one.
PROBE = """
import json, sys
from s3prl_distill.cli import main
seen = {}
for command in json.loads(sys.argv[1]):
    for arguments in ([command, "--help"], [command, "--no-such-option"]):
        try:
            main(arguments)
        except SystemExit:
            pass
        seen[" ".join(arguments)] = [name for name in %r if name in sys.modules]
print(json.dumps(seen))
""" % (HEAVY,)


def subcommands():
    """Every subcommand but the passthrough ones (``pretrain``, ``downstream``): those hand ``--help`` and every other
    argument to the runner they start (ours, s3prl's run_downstream.py), which parses them after importing torch;
    their speed is that runner's, not the command line's."""
    return {name: parser for name, parser in assemble()[1].items() if not parser.get_default("passthrough")}


def test_help_and_argument_errors_of_every_subcommand_import_neither_torch_nor_pydantic():
    names = sorted(subcommands())
    assert {"export", "layer-similarity", "superb"} <= set(names) and "pretrain" not in names
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(names)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(seen) == 2 * len(names)
    assert {call: heavy for call, heavy in seen.items() if heavy} == {}


def test_every_option_of_every_subcommand_says_what_it_does():
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}" for name, parser in subcommands().items()
               for action in parser._actions if not action.help]
    assert missing == []
    superb = {action.dest: action.help for action in subcommands()["superb"]._actions}
    assert "EXPROOT/NAME" in superb["exproot"] and "cuda" in superb["device"]


def test_the_choices_offered_are_the_ones_the_code_implements():
    from s3prl_distill.formats.export import EXPORTERS, export_checkpoint
    from s3prl_distill.model import hidden_state_zero
    from s3prl_distill.pretrain.dphubert.layer_clustering import cluster_layers, similarity_matrix

    parsers = subcommands()
    choices = {(name, action.dest): tuple(action.choices) for name, parser in parsers.items()
               for action in parser._actions if action.choices is not None}
    assert choices[("export", "to")] == options.EXPORT_FORMATS and set(EXPORTERS) == set(options.EXPORT_FORMATS)
    with pytest.raises(ValueError, match="choose from dphubert"):
        export_checkpoint("any.ckpt", "nonsense", "out.ckpt")

    features, transformer_input = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    produced = {hidden_state_zero(name, features, transformer_input)[0, 0, 0].item()
                for name in choices[("layer-similarity", "layer_zero")]}
    assert produced == {0.0, 1.0}  # each name picks its own tensor

    rng = np.random.default_rng(0)
    states = [rng.standard_normal((40, 6)) for _ in range(4)]
    for measure in choices[("layer-similarity", "measure")]:
        assert similarity_matrix(states, measure).shape == (4, 4)
    similarity = similarity_matrix(states, "linear_cka")
    for linkage in choices[("layer-similarity", "linkage")]:
        assert sorted(sum(cluster_layers(similarity, [0, 1, 2, 3], k=2, linkage=linkage), [])) == [0, 1, 2, 3]

    from s3prl_distill.downstream_recipes.demo import PRESETS  # the parser names them without importing the demo
    assert choices[("demo", "preset")] == tuple(PRESETS)


def test_an_unknown_choice_is_an_argument_error_naming_the_choices(capsys):
    from s3prl_distill.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["layer-similarity", "--teacher", "t", "--data", "d", "--output", "o", "--groups", "2",
              "--measure", "nonsense"])
    assert stopped.value.code == 2
    assert "invalid choice: 'nonsense' (choose from 'linear_cka', 'cosine')" in capsys.readouterr().err


@pytest.mark.parametrize("cpus, jobs, expected", [(1, 1, 0), (2, 1, 1), (2, 2, 0), (4, 1, 3), (16, 2, 7),
                                                  (64, 1, options.MAX_DEFAULT_WORKERS)])
def test_the_default_loader_workers_follow_the_cores(monkeypatch, cpus, jobs, expected):
    from s3prl_distill.downstream_recipes.commands import sweep_workers
    from s3prl_distill.downstream_recipes.superb.runner import SweepSpec
    from s3prl_distill.pretrain.config import DataConfig

    monkeypatch.setattr(options, "usable_cpus", lambda: cpus)
    assert sweep_workers(None, jobs) == expected
    assert sweep_workers(3, jobs) == 3  # given: kept
    if jobs == 1:
        assert DataConfig(root="r", bucket_dir="b", sets=["s"]).num_workers == expected
        assert SweepSpec(upstream="fbank", data_root="d", name="n", tasks=["ks"]).num_workers == expected
    assert DataConfig(root="r", bucket_dir="b", sets=["s"], num_workers=5).num_workers == 5


def test_usable_cpus_are_those_the_process_may_run_on():
    probe = ("import os; from s3prl_distill.options import usable_cpus, default_num_workers\n"
             "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
             "print(usable_cpus(), default_num_workers())")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["1", "0"]


def test_a_yaml_list_value_in_an_override_is_quoted_for_yaml_inside_the_shell_quotes(tmp_path):
    """The README's ``-o`` with a CNN spec, through bash as a user types it."""
    from s3prl_distill.errors import ConfigError
    from s3prl_distill.pretrain.config import load_config

    config = "pretrain/distilhubert/config.yaml"
    typed = "\"config.student.feature_extractor.conv_layers='[(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2'\""
    argument = subprocess.run(["bash", "-c", f"printf %s {typed}"], capture_output=True, text=True,
                              check=True).stdout
    loaded = load_config(config, argument)
    assert loaded.student.feature_extractor.conv_layers == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    with pytest.raises((ConfigError, ValueError)):
        load_config(config, argument.replace("'", ""))


def test_the_superb_chart_keeps_equal_values_and_long_names_apart():
    import matplotlib.pyplot as plt

    from s3prl_distill.downstream_recipes.superb.report import chart_figure

    names = ["hubert_local (teacher)", "random-weight teacher", "distilhubert student", "fithubert student",
             "fbank", "a rather long upstream label"]
    results = [{"upstream": f"u{i}", "label": name, "tasks": {task: {"value": 1.0} for task in
                                                              ("pr", "asr", "ks", "sid", "er")}}
               for i, name in enumerate(names)]
    figure = chart_figure(results, "SUPERB")
    try:
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        legend = [text.get_window_extent(renderer) for text in figure.legends[0].get_texts()]
        assert [text.get_text() for text in figure.legends[0].get_texts()] == names  # each name once
        assert all(figure.bbox.contains(box.x0, box.y0) and figure.bbox.contains(box.x1, box.y1) for box in legend)
        for first, second in combinations(legend, 2):
            assert not first.overlaps(second)
        for axis in figure.axes:
            values = [text for text in axis.texts]
            assert [text.get_text() for text in values] == ["100.0"] * len(names)
            boxes = [text.get_window_extent(renderer) for text in values]
            for first, second in combinations(boxes, 2):
                assert not first.overlaps(second)
            title = axis.title.get_window_extent(renderer)
            for box in boxes:  # inside the panel, under its title
                assert box.y1 <= axis.bbox.y1 and not box.overlaps(title)
            assert not any(label.get_text() for label in axis.get_xticklabels())  # names are in the legend
            assert not any(axis.get_window_extent(renderer).overlaps(box) for box in legend)
    finally:
        plt.close(figure)
