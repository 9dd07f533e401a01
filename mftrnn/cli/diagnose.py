r"""``mftrnn diagnose PATH --T N``: the trainability check (:func:`mftrnn.nets.diagnose.diagnose`) of a saved module.

``PATH`` is read with ``torch.load(..., weights_only=True)`` (tensors and plain containers only; no code runs):

* a ``state_dict`` of ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (the module is rebuilt from the key names and shapes:
  ``weight_hh_l0`` of shape :math:`(gN, N)` gives :math:`g` = 4 -> LSTM, 3 -> GRU, 1 -> RNN (tanh assumed: a
  ``state_dict`` does not record the nonlinearity); ``num_layers`` from the ``_l{k}`` keys, ``bidirectional`` from
  ``_reverse``, ``bias`` from ``bias_ih_l0``, ``input_size`` from ``weight_ih_l0``), of mftrnn's ``MinimalRNN``
  (``bias_l0``, ``embed_weight_l0``) or of ``nn.LSTMCell``/``nn.GRUCell``/``nn.RNNCell`` (``weight_ih``,
  ``weight_hh``, ``bias_ih``, ``bias_hh``);
* any other ``state_dict`` with ``--cell CELL --hidden N --input N [--layers L]`` (the cell's sequence module of
  :func:`mftrnn.nets.registry.sequence_module`, else its derived module);
* a checkpoint holding such a dict (nested dicts are searched: an LM checkpoint ``{"model": {"rnn.weight_ih_l0":
  ...}}`` works); where several recurrent modules are found, ``--prefix`` picks one (``--prefix rnn.``).

A whole pickled module (``torch.save(module)``) is refused unless ``--trust`` is given: unpickling it runs code
from the file. Every input error is one :class:`~mftrnn.cli.app.CliError` line.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import warnings
import zipfile

__all__ = ["add_parser", "cmd_diagnose", "load_module"]

_MAX_SHOWN = 6


def _error(message: str) -> Exception:
    from .app import CliError   # imported here: app.py imports this module
    return CliError(message)


def add_parser(sub) -> None:
    """Add ``mftrnn diagnose`` to the subcommands ``sub`` (an ``argparse`` subparsers action)."""
    p = sub.add_parser(
        "diagnose", help="trainability check of a saved RNN: chi, xi, the T-step Jacobian and a verdict",
        description="Read the weights of a saved nn.RNN/LSTM/GRU (a state_dict, or a checkpoint holding one) or of "
                    "an mftrnn module, estimate the mean field's hyperparameters per layer, and report chi, xi, the "
                    "predicted T-step Jacobian spectrum and a verdict, next to the same quantities measured on the "
                    "module with random inputs. Assumes i.i.d. weights: exact in law at initialisation, a rough "
                    "guide after training.")
    p.add_argument("path", metavar="PATH", help="file written by torch.save (a state_dict; a whole module needs "
                                                "--trust)")
    p.add_argument("--T", dest="T", required=True, metavar="N", help="sequence length (an integer >= 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--R", dest="R", default="1", metavar="X",
                   help="per-component second moment of the input |x|^2/N_in (default 1)")
    p.add_argument("--cell", default=None, metavar="CELL",
                   help="cell of a state_dict whose keys are not torch's RNN layout (e.g. a DerivedRNN's)")
    p.add_argument("--hidden", default=None, metavar="N", help="hidden size (with --cell)")
    p.add_argument("--input", default=None, metavar="N", help="input size (with --cell)")
    p.add_argument("--layers", default=None, metavar="L", help="number of layers (with --cell; default 1)")
    p.add_argument("--prefix", default=None, metavar="P",
                   help="key prefix of the recurrent module inside a larger state_dict (e.g. 'rnn.')")
    p.add_argument("--no-measure", dest="measure", action="store_false",
                   help="theory only: skip the measurement on the module")
    p.add_argument("--max-steps", dest="max_steps", default="200", metavar="S",
                   help="measure over min(T, S) steps (default 200)")
    p.add_argument("--seed", default="0", metavar="K", help="seed of the random inputs and probes (default 0)")
    p.add_argument("--trust", action="store_true",
                   help="allow a whole pickled module: unpickling runs code from the file, so only for files you "
                        "trust (prefer saving module.state_dict())")


# --------------------------------------------------------------------------- small parsers
def _shown(text) -> str:
    text = str(text)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(flag: str, text, minimum: int) -> int:
    try:
        value = float(text)
    except (TypeError, ValueError, OverflowError):
        raise _error(f"{flag} must be an integer >= {minimum}, got {_shown(text)!r}") from None
    if not math.isfinite(value) or value != int(value) or value < minimum:
        raise _error(f"{flag} must be an integer >= {minimum}, got {_shown(text)!r}")
    return int(value)


def _number(flag: str, text) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError, OverflowError):
        raise _error(f"{flag} must be a number, got {_shown(text)!r}") from None
    if not math.isfinite(value) or value < 0:
        raise _error(f"{flag} must be finite and >= 0, got {_shown(text)!r}")
    return value


# --------------------------------------------------------------------------- loading
def _load(path: str, trust: bool):
    """The object in ``path``: weights-only unpickling, or (``trust``) full unpickling."""
    import pickle

    import torch
    if not os.path.exists(path):
        raise _error(f"{path}: no such file")
    if not os.path.isfile(path):
        raise _error(f"{path}: not a file")
    try:
        is_zip = zipfile.is_zipfile(path)      # torch.save's format since PyTorch 1.6
    except OSError as exc:
        raise _error(f"{path}: cannot read ({exc.strerror or exc})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only load failed" not in str(exc).lower():
                raise _error(f"{path}: not a torch file ({' '.join(str(exc).split())[:120]})") from None
            if not trust:
                if not is_zip:
                    raise _error(f"{path}: not a torch file (not torch.save's zip format; a file in the legacy "
                                 "format holding pickled objects loads only with --trust)") from None
                raise _error(f"{path} holds pickled Python objects, not a plain state_dict; unpickling them runs code "
                             "from the file: pass --trust if you trust it, or save module.state_dict() "
                             "instead") from None
        except OSError as exc:
            raise _error(f"{path}: cannot read ({exc.strerror or exc})") from None
        except Exception as exc:
            raise _error(f"{path}: not a torch file ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:120] or 'unreadable'})") from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise _error(f"{path}: cannot be loaded ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:120]})") from None


def _flatten(obj, prefix: str = "", out: dict | None = None, depth: int = 0) -> dict:
    """``{dotted key: tensor}`` of every tensor in nested dicts (the layout of ``state_dict`` keys)."""
    import torch
    out = {} if out is None else out
    if depth > 8:
        return out
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            out[key] = v
        elif isinstance(v, dict):
            _flatten(v, key + ".", out, depth + 1)
    return out


_PATTERNS = (re.compile(r"^(.*?)weight_hh_l0$"), re.compile(r"^(.*?)layers\.0\.weight_hh_[a-z]+$"),
             re.compile(r"^(.*?)weight_hh$"), re.compile(r"^(.*?)weight_hh_[a-z]$"))


def _prefixes(keys) -> list:
    """Prefixes of the recurrent modules among ``keys`` (the first pattern that matches any key wins)."""
    for pat in _PATTERNS:
        found = sorted({m.group(1) for k in keys for m in [pat.match(k)] if m})
        if found:
            return found
    return []


def _sub_dict(flat: dict, prefix: str | None, path: str) -> tuple[dict, str]:
    if prefix is None:
        found = _prefixes(flat)
        if len(found) > 1:
            raise _error(f"{path} holds several recurrent modules (key prefixes "
                         f"{', '.join(repr(p) for p in found[:_MAX_SHOWN])}); choose one with --prefix")
        prefix = found[0] if found else ""
    sub = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    if not sub:
        raise _error(f"{path}: no key starts with --prefix {prefix!r}")
    return sub, prefix


def _keys_shown(keys) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} keys)" if len(keys) > _MAX_SHOWN else ""
    return ", ".join(keys[:_MAX_SHOWN]) + more


def _torch_layout(sd: dict, path: str):
    """``(module, description, assumptions)`` rebuilt from a torch-layout ``state_dict``, or None."""
    from torch import nn

    from ..nets.layers import MinimalRNN
    if "weight_hh_l0" in sd and "weight_ih_l0" in sd:
        W, V = sd["weight_hh_l0"], sd["weight_ih_l0"]
        if W.dim() != 2 or V.dim() != 2:
            raise _error(f"{path}: weight_hh_l0 and weight_ih_l0 must be matrices, got shapes {tuple(W.shape)}, "
                         f"{tuple(V.shape)}")
        N, rows, n_in = W.shape[1], W.shape[0], V.shape[1]
        layers = 1
        while f"weight_ih_l{layers}" in sd:
            layers += 1
        if "bias_l0" in sd or "embed_weight_l0" in sd:
            embed = "embed_weight_l0" in sd
            n_in = sd["embed_weight_l0"].shape[1] if embed else n_in
            return (MinimalRNN(n_in, N, num_layers=layers, embed=embed),
                    f"mftrnn MinimalRNN(input_size={n_in}, hidden_size={N}, num_layers={layers}, embed={embed})", [])
        if "weight_hr_l0" in sd:
            raise _error(f"{path}: an nn.LSTM with proj_size > 0 (weight_hr_l0) has no counterpart in the theory")
        if N == 0 or rows % N:
            raise _error(f"{path}: weight_hh_l0 has shape {tuple(W.shape)}; expected (g*N, N) with g = 1, 3 or 4")
        kinds = {4: nn.LSTM, 3: nn.GRU, 1: nn.RNN}
        cls = kinds.get(rows // N)
        if cls is None:
            raise _error(f"{path}: weight_hh_l0 has {rows} = {rows // N} x {N} rows; 4N is an LSTM, 3N a GRU, N an RNN")
        kw = dict(num_layers=layers, bidirectional="weight_ih_l0_reverse" in sd, bias="bias_ih_l0" in sd)
        assumed = ["nonlinearity tanh (a state_dict does not record it)"] if cls is nn.RNN else []
        if cls is nn.RNN:
            kw["nonlinearity"] = "tanh"
        desc = f"nn.{cls.__name__}(input_size={n_in}, hidden_size={N}, " + ", ".join(f"{k}={v}" for k, v in kw.items()
                                                                                  if k != "nonlinearity") + ")"
        return cls(n_in, N, **kw), desc, assumed
    if {"weight_hh", "weight_ih"} <= set(sd) and ("bias_ih" in sd or set(sd) == {"weight_hh", "weight_ih"}):
        W, V = sd["weight_hh"], sd["weight_ih"]
        N, rows, n_in = W.shape[1], W.shape[0], V.shape[1]
        kinds = {4: nn.LSTMCell, 3: nn.GRUCell, 1: nn.RNNCell}
        cls = kinds.get(rows // N) if N and rows % N == 0 else None
        if cls is None:
            raise _error(f"{path}: weight_hh has shape {tuple(W.shape)}; expected (g*N, N) with g = 1, 3 or 4")
        assumed = ["nonlinearity tanh (a state_dict does not record it)"] if cls is nn.RNNCell else []
        return (cls(n_in, N, bias="bias_ih" in sd), f"nn.{cls.__name__}(input_size={n_in}, hidden_size={N})",
                assumed)
    return None


def _from_cell(sd: dict, args, path: str):
    """The module of ``--cell`` with ``--hidden``, ``--input``, ``--layers`` that takes ``sd``."""
    from ..cells.registry import get_cell
    from ..nets.gated import derived_module
    from ..nets.registry import sequence_module
    if args.hidden is None or args.input is None:
        raise _error("--cell needs --hidden N and --input N")
    hidden, n_in = _int("--hidden", args.hidden, 1), _int("--input", args.input, 1)
    layers = 1 if args.layers is None else _int("--layers", args.layers, 1)
    cell = get_cell(args.cell).name          # UnknownCellError (an MftrnnError) for a bad name
    tried = []
    for build in (sequence_module, derived_module):
        try:
            module = build(cell, n_in, hidden, layers)
        except Exception as exc:             # noqa: BLE001 - reported below, one line
            tried.append(f"{build.__name__}: {' '.join(str(exc).split())[:120]}")
            continue
        missing, unexpected, mismatched = _fit(module, sd)
        if not (missing or unexpected or mismatched):
            return module, f"{type(module).__name__} of cell {cell!r} (input {n_in}, hidden {hidden}, {layers} " \
                           f"layer{'s' if layers > 1 else ''})", []
        tried.append(f"{type(module).__name__}: " + "; ".join(
            s for s in ((f"missing {_keys_shown(missing)}" if missing else ""),
                        (f"unexpected {_keys_shown(unexpected)}" if unexpected else ""),
                        (f"shape mismatch {_keys_shown(mismatched)}" if mismatched else "")) if s))
    raise _error(f"{path}: the state_dict does not fit cell {cell!r} with hidden {hidden}, input {n_in}, "
                 f"{layers} layer(s) ({' | '.join(tried)})")


def _fit(module, sd: dict) -> tuple[list, list, list]:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    return missing, unexpected, mismatched


def load_module(path: str, *, trust: bool = False, cell=None, hidden=None, input=None, layers=None,
                prefix=None) -> tuple:
    """``(module, description, assumptions)`` from a file (the module docstring says which files are read)."""
    import torch
    args = argparse.Namespace(cell=cell, hidden=hidden, input=input, layers=layers, prefix=prefix)
    obj = _load(path, trust)
    if isinstance(obj, torch.nn.Module):
        if any(v is not None for v in (cell, hidden, input, layers, prefix)):
            raise _error(f"{path} holds a whole module; --cell, --hidden, --input, --layers and --prefix are for "
                         "state_dicts")
        return obj, f"{type(obj).__name__} (a whole module, loaded with --trust)", []
    if not isinstance(obj, dict):
        raise _error(f"{path} holds a {type(obj).__name__}, not a state_dict or a module")
    flat = _flatten(obj)
    if not flat:
        raise _error(f"{path} holds a dict without tensors, not a state_dict")
    if cell is None and any(v is not None for v in (hidden, input, layers)):
        raise _error("--hidden, --input and --layers go with --cell")
    sd, used = _sub_dict(flat, prefix, path)
    if cell is not None:
        module, desc, assumed = _from_cell(sd, args, path)
    else:
        built = _torch_layout(sd, path)
        if built is None:
            raise _error(f"{path}: cannot recognise the state_dict (keys {_keys_shown(sd)}): expected nn.RNN/LSTM/"
                         "GRU keys (weight_ih_l0, weight_hh_l0, ...) or a cell's; give --cell, --hidden, --input")
        module, desc, assumed = built
    missing, unexpected, mismatched = _fit(module, sd)
    if missing or unexpected or mismatched:
        parts = [f"missing {_keys_shown(missing)}" if missing else "",
                 f"unknown keys {_keys_shown(unexpected)}" if unexpected else "",
                 f"wrong shapes {_keys_shown(mismatched)}" if mismatched else ""]
        raise _error(f"{path}: the state_dict does not fit {desc}: " + "; ".join(p for p in parts if p)
                     + (" (use --prefix to pick the recurrent module's keys)" if unexpected and not used else ""))
    not_float = [k for k, v in sd.items() if not v.is_floating_point()]
    if not_float:
        raise _error(f"{path}: the state_dict holds non-float tensors ({_keys_shown(not_float)})")
    if any(not bool(torch.isfinite(v).all()) for v in sd.values()):
        raise _error(f"{path}: the state_dict holds non-finite weights (nan or inf)")
    if any(v.dtype == torch.float64 for v in sd.values()):
        module = module.to(torch.float64)     # keep the file's precision
    try:
        module.load_state_dict(sd)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise _error(f"{path}: the state_dict does not load into {desc} ({' '.join(str(exc).split())[:160]})") \
            from None
    return module, desc + (f" from keys {used!r}..." if used else ""), assumed


# --------------------------------------------------------------------------- the command
def cmd_diagnose(args: argparse.Namespace) -> int:
    """Run ``mftrnn diagnose``: print the report (or ``--json``); input errors raise ``CliError``."""
    from .app import _parse_T
    T = _parse_T(str(args.T))
    R = _number("--R", args.R)
    max_steps = _int("--max-steps", args.max_steps, 2)
    seed = _int("--seed", args.seed, 0)
    module, desc, assumed = load_module(args.path, trust=bool(args.trust), cell=args.cell, hidden=args.hidden,
                                        input=args.input, layers=args.layers, prefix=args.prefix)
    from ..nets.diagnose import diagnose
    result = diagnose(module, T, R=R, measure=bool(args.measure), seed=seed, max_steps=max_steps)
    if args.json:
        out = {"file": args.path, "loaded_as": desc, "assumed": assumed, **result.to_dict()}
        print(json.dumps(out, allow_nan=False))
        return 0
    print(f"{args.path}: {desc}")
    for a in assumed:
        print(f"assumed: {a}")
    print(result)
    sys.stdout.flush()
    return 0
