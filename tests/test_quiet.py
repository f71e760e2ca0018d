"""The command line hides the known-harmless third-party messages (and only those), and says the fp16-on-CPU
fallback once; ``--show-third-party-warnings`` brings the hidden messages back. Commands run in a subprocess with
stderr captured, i.e. not a terminal: progress then comes as log lines, never ``\\r`` redraws."""

import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch

from s3prl_distill import quiet

from helpers import run_python

COMMAND = str(Path(sys.executable).parent / "s3prl-distill")
HIDDEN = ("ESPnet is not installed", "HubertModel Config:", "`torch.nn.utils.weight_norm` is deprecated",
          "torchaudio native library")
ENVIRONMENT = {"S3PRL_DISTILL_SHOW_WARNINGS": "", "S3PRL_DISTILL_QUIET": "", "S3PRL_DISTILL_PROGRESS": "",
               "S3PRL_DISTILL_PROGRESS_INTERVAL": "0"}


def pretrain_command(setup, exproot: Path, *arguments: str, show: bool = False):
    flag = ["--show-third-party-warnings"] if show else []
    return run_python([COMMAND, *flag, "pretrain", *arguments, "-p", str(exproot)], cwd=exproot.parent,
                      extra_env=ENVIRONMENT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fp16 fallback is a CPU run's")
def test_pretrain_console_is_quiet_and_the_flag_brings_the_warnings_back(setup, tmp_path):
    exproot = tmp_path / "runs"
    exproot.mkdir()
    new = pretrain_command(setup, exproot, "-g", str(setup["config"]), "-n", "quiet",
                           "-o", "config.runner.total_steps=2,,config.runner.precision=fp16")
    assert new.returncode == 0, new.stderr[-3000:]
    resumed = pretrain_command(setup, exproot, "-e", str(exproot / "quiet"), "-o", "config.runner.total_steps=3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for result in (new, resumed):
        assert "\r" not in result.stderr
        for text in HIDDEN:
            assert text not in result.stderr, text
        assert result.stderr.count("needs CUDA") == 1  # said once, where the run starts, not by each part
        assert "s3prl_distill.progress: distill: " in result.stderr  # progress as log lines instead
    assert "distill: 3/3 step (100%)" in resumed.stderr

    shown = pretrain_command(setup, exproot, "-g", str(setup["config"]), "-n", "shown",
                             "-o", "config.runner.total_steps=1", show=True)
    assert shown.returncode == 0, shown.stderr[-3000:]
    for text in HIDDEN[:3]:  # (the torchaudio line only where its native library fails to load)
        assert text in shown.stderr, text


def test_filters_are_narrow():
    """Only the listed messages from the listed emitters go; the same text from elsewhere, or another message
    from the same emitter, still shows."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        quiet._installed = False
        quiet.install_filters()
        try:
            namespace = {"__name__": "torch.nn.utils.weight_norm", "warnings": warnings}
            exec("warnings.warn('`torch.nn.utils.weight_norm` is deprecated in favor of x', FutureWarning)",
                 namespace)
            exec("warnings.warn('something else', FutureWarning)", namespace)
            warnings.warn("`torch.nn.utils.weight_norm` is deprecated in favor of x", FutureWarning)  # from a test
            namespace["__name__"] = "s3prl.downstream.runner"
            exec("warnings.warn('`torch.cuda.amp.autocast(args...)` is deprecated. Please use', FutureWarning)",
                 namespace)
        finally:
            for known in quiet.KNOWN_LOG_LINES:
                for log_filter in list(logging.getLogger(known.logger).filters):
                    logging.getLogger(known.logger).removeFilter(log_filter)
            quiet._installed = False
    assert [str(w.message) for w in caught] == ["something else",
                                                "`torch.nn.utils.weight_norm` is deprecated in favor of x"]


def test_log_lines_are_dropped_only_from_their_logger(caplog):
    caplog.set_level(logging.INFO)
    quiet._installed = False
    quiet.install_filters()
    try:
        logging.getLogger("s3prl.upstream.hubert.hubert_model").info("HubertModel Config: HubertConfig(...)")
        logging.getLogger("s3prl.upstream.hubert.hubert_model").info("cannot find dictionary")
        logging.getLogger("s3prl_distill.elsewhere").info("HubertModel Config: kept")
        logging.getLogger("s3prl.upstream.espnet_hubert.expert").warning("ESPnet is not installed, cannot use it")
    finally:
        for known in quiet.KNOWN_LOG_LINES:
            for log_filter in list(logging.getLogger(known.logger).filters):
                logging.getLogger(known.logger).removeFilter(log_filter)
        quiet._installed = False
    assert caplog.messages == ["cannot find dictionary", "HubertModel Config: kept"]
