"""What a student reads when an exercise test fails: a few lines that say what to fix.

Three places produce them:
* `tolerances.assert_close` describes a numerical mismatch with `mismatch` (None, a wrong shape, NaN or inf, the
  worst element and the allowed error, and a guess at the mistake: a constant factor, a flipped sign, an offset,
  the right values in the wrong places) instead of printing arrays;
* `explain_comparison` (conftest's pytest_assertrepr_compare in student mode) explains the `==` of a plain
  `assert`: a dtype ("wrong dtype: got float64, expected float32" and how float64 creeps in), a shape, a number
  against pytest.approx;
* `short_failure` (the score table's details) cuts a failure to its message: the line of the student's stub
  where it stopped, the assert statement that failed (when it carries no message of its own) and its values
  without pytest's "+ where" lines, NumPy's assertion reports without their array dumps, hypothesis' failing
  example on one line, and a hint when the function returned None.
The convention of the suite: `assert actual == expected` (what the student's code gave on the left).
"""

from __future__ import annotations

import math
import os
import re

import numpy as np

# --- numbers against numbers ---------------------------------------------------------------------------------


def _fmt(x) -> str:
    """A NumPy scalar as NumPy prints it (shortest round trip: float32 0.1 is '0.1', not 0.10000000149...)."""
    return str(x[()] if isinstance(x, np.ndarray) else x)


def _pair(got, want) -> tuple[str, str]:
    """Two numbers to as many digits as it takes to see where they differ."""
    g, w = float(got), float(want)
    if not (math.isfinite(g) and math.isfinite(w)) or g == w:
        return _fmt(got), _fmt(want)
    digits = 4 + max(0, int(-math.log10(abs(g - w) / max(abs(g), abs(w)))))
    return (f"{g:.{digits}g}", f"{w:.{digits}g}") if digits < 16 else (_fmt(got), _fmt(want))


def _shape_hint(got: tuple, want: tuple) -> str:
    if len(got) != len(want):
        return "an axis too many or too few? (keepdims=True, [:, None], what broadcasting added)"
    if math.prod(got) == math.prod(want):
        return "the right size in another layout? (a reshape or a transpose)"
    return "check the size of each axis"


def _index(i: tuple) -> str:
    return "(" + ", ".join(str(int(k)) for k in i) + ("," if len(i) == 1 else "") + ")" if i else "()"


def guess(actual: np.ndarray, expected: np.ndarray, allowed: np.ndarray) -> str:
    """A common mistake that explains `actual` (float64, finite, same shape as `expected`), or ''.
    `allowed`: the tolerance per element; a guess must explain every element to that accuracy (times 10)."""
    a, e, room = actual.ravel(), expected.ravel(), 10 * np.broadcast_to(allowed, actual.shape).ravel()
    room = room + 1e-7 * np.max(np.abs(e), initial=0.0)
    if a.size >= 2 and np.dot(e, e) > 0:
        c = float(np.dot(a, e) / np.dot(e, e))
        if np.all(np.abs(a - c * e) <= room):
            if abs(c + 1) < 1e-6:
                return "the sign is flipped everywhere"
            if abs(c) > 1e-12:
                return f"everywhere {c:.6g} times the expected values (a missing or extra factor, sqrt or square?)"
        d = float(np.mean(a - e))
        if np.all(np.abs(a - e - d) <= room):
            return f"everywhere the expected values {'+' if d >= 0 else '-'} {abs(d):.6g} (a missing or extra term?)"
        if np.all(np.abs(np.sort(a) - np.sort(e)) <= room):
            return "the right values in the wrong places (an axis swapped or reversed, or two halves exchanged?)"
    return ""


def mismatch(actual, expected, tol, scale=None, what: str = "") -> str | None:
    """Why `actual` is not `expected` to |actual - expected| <= tol.atol + tol.rtol * scale (scale defaults to
    |expected|), in a few short lines (`what` first); None when it is."""
    lines = [what.rstrip().rstrip(":") + ":"] if what else []
    if actual is None:
        return "\n".join([*lines, "got None: does the function `return` its result?"])
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return "\n".join([*lines, f"wrong shape: got {actual.shape}, expected {expected.shape}; "
                                   f"{_shape_hint(actual.shape, expected.shape)}"])
    if actual.dtype.kind not in "fiub":
        return "\n".join([*lines, f"expected numbers, got an array of dtype {actual.dtype} (return a float array)"])
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    scale = np.abs(e) if scale is None else np.asarray(scale, dtype=np.float64)
    err = np.abs(a - e)
    allowed = np.broadcast_to(tol.atol + tol.rtol * scale, a.shape)
    bad = ~(err <= allowed)  # NaN counts as bad
    if not bad.any():
        return None
    at = (lambda flat: np.unravel_index(flat, a.shape)) if a.ndim else (lambda flat: ())
    broken = ~np.isfinite(a) & np.isfinite(e)
    if broken.any():
        i = at(np.flatnonzero(broken)[0])
        kinds = " or ".join(k for k, m in (("NaN", np.isnan(a)), ("inf", np.isinf(a))) if (m & broken).any())
        return "\n".join([*lines, f"{int(broken.sum())} of {a.size} elements are {kinds}, the first at {_index(i)} "
                                   f"where {_fmt(expected[i])} was expected",
                           "(a 0 / 0, the log or sqrt of a negative number, an overflow?)"])
    i = at(int(np.argmax(np.where(bad, err - allowed, -np.inf))))
    got, want = _pair(actual[i], expected[i])
    where = f"{int(bad.sum())} of {a.size} elements off; the worst at {_index(i)}: " if a.size > 1 else ""
    lines.append(f"{where}got {got}, expected {want} (|error| {err[i]:.3g}, allowed {allowed[i]:.3g})")
    hint = guess(a, e, allowed) if np.all(np.isfinite(e)) else ""
    return "\n".join([*lines, hint] if hint else lines)


# --- plain asserts: `actual == expected` ---------------------------------------------------------------------


def _dtype(x) -> np.dtype | None:
    if isinstance(x, np.dtype):
        return x
    if isinstance(x, type) and issubclass(x, np.generic):
        return np.dtype(x)
    return None


def explain_comparison(op: str, left, right) -> list[str] | None:
    """pytest_assertrepr_compare in student mode: lines that replace pytest's account of a failed `==`."""
    if op != "==":
        return None
    got, want = _dtype(left), _dtype(right)
    if got is not None and want is not None and got != want and (isinstance(left, np.dtype) or
                                                                  isinstance(right, np.dtype)):
        text = f"wrong dtype: got {got}, expected {want}"
        if want.kind == "f" and got.kind == "f" and got.itemsize > want.itemsize:
            return [f"{text}: keep the inputs' dtype (dtype= in np.zeros/np.arange; .astype(x.dtype) on float64 "
                    "schedule values)"]
        if want.kind == "f" and got.kind == "f":
            return [f"{text}: compute in the inputs' dtype (something rounded the result to {got})"]
        if want.kind == "f":
            return [f"{text}: integer arithmetic? Build float arrays (dtype=x.dtype)"]
        return [text]
    shapes = [isinstance(s, tuple) and all(isinstance(k, (int, np.integer)) for k in s) for s in (left, right)]
    if all(shapes) and tuple(left) != tuple(right):
        got, want = tuple(int(k) for k in left), tuple(int(k) for k in right)
        return [f"wrong shape: got {got}, expected {want}; {_shape_hint(got, want)}"]
    want = getattr(right, "expected", None)
    if type(right).__name__ == "ApproxScalar" and all(isinstance(v, (int, float, np.number)) for v in (left, want)):
        got, expected = _pair(left, want)
        ratio = float(left) / float(want) if float(want) != 0 else 1.0
        factor = f" (got / expected = {ratio:.4g})" if abs(ratio - 1) > 1e-3 else ""
        return [f"got {got}, expected {expected} +- {right.tolerance:.2g}{factor}"]
    return None


# --- the score table's account of one failure ---------------------------------------------------------------

WHERE = re.compile(r"^\s*\+\s+(where|and)\b")  # pytest's "+  where x = f(y)" lines: values of subexpressions
OPAQUE = re.compile(r"^\(?(np\.)?(False_?|True_?|not .*)\)?$")  # "assert False": the source line says more
NUMPY_SCALAR = re.compile(r"\bnp\.(float|int|uint|complex|bool)\d*_?\(([^()]*)\)")  # np.float64(0.5): 0.5
NUMPY_DUMP = re.compile(r"^\s*(x|y|ACTUAL|DESIRED): ")  # np.testing's arrays


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _unwrap(text: str) -> str:
    """Without the parentheses pytest puts around the account of `a and b` (only if they enclose all of it)."""
    depth = 0
    for k, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and k < len(text) - 1:
            return text
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text


def _from_stub(entry) -> bool:
    """A frame of the student's stubs: minidiff/exercises/chNN.py, or a folder given by --exercises-from."""
    folder = os.environ.get("MINIDIFF_EXERCISES_PACKAGE", "")
    in_folder = entry.path.parent.name == "exercises" or (os.sep in folder and str(entry.path.parent) == folder)
    return in_folder and entry.path.name.startswith("ch")


def _statement(entry) -> str:
    try:
        return _one_line(str(entry.statement))
    except Exception:  # the source is not available (a compiled frame): show no line
        return ""


def _numpy_report(lines: list[str]) -> list[str]:
    """np.testing's report without its array dumps: the test's own message, then one line of numbers."""
    own, numbers, first = [], [], ""
    known = re.compile(r"^(Not equal to tolerance|Arrays are not (almost )?equal|\(shapes|\(mismatch|First \d+ "
                       r"mismatch|Mismatch(ed)? (at|elements)|Max (absolute|relative) difference)")
    for ln in lines:
        s = ln.strip()
        if not s or NUMPY_DUMP.match(ln):
            continue
        if m := re.match(r"^\[(.*)\]: (.*) \(ACTUAL\), (.*) \(DESIRED\)$", s):
            first = first or f"first at [{m.group(1)}]: got {m.group(2)}, expected {m.group(3)}"
        elif s.startswith(("Mismatched elements", "Max absolute difference")):
            numbers.append(s.replace(" among violations", ""))
        elif s.startswith("(shapes"):
            numbers.append("wrong shape " + s.strip("()").replace(" mismatch", ""))
        elif not known.match(s) and not s.startswith(("array(", "[")) and not ln.startswith((" ", "\t")):
            own.append(s)
    return own + ["; ".join(numbers + ([first] if first else []))]


def short_failure(excinfo, max_lines: int = 5, width: int = 150) -> str:
    """A failed exercise test in a few lines: where in the student's stub it stopped (and that line), then what
    went wrong (see the module docstring)."""
    err, tb = excinfo.value, excinfo.traceback
    stub = [e for e in tb if _from_stub(e)]
    head = []
    if stub:
        line = "" if isinstance(err, NotImplementedError) else _statement(stub[-1])
        head = [f"at {stub[-1].path.name}:{stub[-1].lineno + 1}" + (f": {line}" if line else "")]
    text = str(err)
    if isinstance(err, AssertionError):
        lines = [ln for ln in text.splitlines() if ln.strip() and not WHERE.match(ln)]
        if lines and lines[0].startswith("assert "):  # a plain assert without a message: its source, its values
            values = _unwrap("\n".join(lines)[len("assert "):]).splitlines()
            rest = [] if len(values) == 1 and OPAQUE.match(values[0].strip()) else values
            statement = _statement(tb[-1])
            body = ([statement] if statement.startswith("assert ") else []) + rest
        elif any(s.strip().startswith(("Mismatched elements", "(shapes")) for s in lines):
            report = _numpy_report(lines)  # without a message of the test's own, the call says what was compared
            statement = _statement(next((e for e in reversed(tb) if e.path.name.startswith("test_")), tb[-1]))
            body = report if len(report) > 1 or not statement else [statement, *report]
        else:  # the test's own message; pytest's "assert ..." account of it follows and says less
            cut = next((k for k, ln in enumerate(lines) if k and ln.startswith("assert ")), len(lines))
            body = lines[:cut]
        body = body or ["AssertionError"]
    else:
        body = [f"{type(err).__name__}: {ln}" if k == 0 else ln for k, ln in enumerate(text.splitlines() or [""])]
        if "NoneType" in text and not (tb and _from_stub(tb[-1])):
            body.append("(did the function return None? check that it ends with `return ...`)")
    body = [NUMPY_SCALAR.sub(r"\2", ln.strip()).replace("np.True_", "True").replace("np.False_", "False")
            for ln in body if ln.strip()]
    for note in getattr(err, "__notes__", []):  # hypothesis: the minimal failing example, on one line
        if note.startswith(("Failing test case", "Falsifying example")):
            code = "\n".join(ln.split("  #")[0].split(" # ")[0] for ln in note.splitlines()
                             if not ln.lstrip().startswith("#"))  # without hypothesis' comments
            body.append(_one_line(code).replace("( ", "(").replace(", )", ")"))
    lines = [ln if len(ln) <= width else ln[: width - 3] + "..." for ln in head + body]
    more = [f"... ({len(lines) - max_lines} more lines: rerun with --tb=short)"] if len(lines) > max_lines else []
    return "\n".join([*lines[:max_lines], *more])
