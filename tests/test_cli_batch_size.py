"""``--batch-size`` defaults per device type (measured by ``benchmarks/window_batch.py``)."""

from __future__ import annotations

import argparse

import pytest
import torch

from phreg_bench.cli._options import add_runtime_options, resolve_batch_size


def test_default_batch_size_is_per_device_type():
    parser = argparse.ArgumentParser()
    add_runtime_options(parser)
    args = parser.parse_args([])
    assert args.batch_size is None
    assert resolve_batch_size(args.batch_size, torch.device("cpu")) == 1
    assert resolve_batch_size(args.batch_size, torch.device("cuda", 0)) == 8
    assert resolve_batch_size(parser.parse_args(["--batch-size", "4"]).batch_size, torch.device("cpu")) == 4
    help_text = parser.format_help()
    assert "1 on CPU" in help_text and "8 on CUDA" in help_text


def test_batch_size_below_one_is_refused(capsys):
    parser = argparse.ArgumentParser()
    add_runtime_options(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-size", "0"])
    assert "--batch-size" in capsys.readouterr().err
