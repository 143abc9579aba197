"""VJP rules of elementwise arithmetic, y = f(a, c) entry by entry. Numpy broadcasting is undone
by the driver for the ops registered with broadcast="elementwise"; no rule handles it."""

from __future__ import annotations

from dlc.autodiff.rules import defdx, defvjp, defzero
from dlc.autodiff.var import op


@defvjp("Add", broadcast="elementwise")
def _add(ad, n, g):
    (dy,) = g
    return dy, dy


@defvjp("Sub", broadcast="elementwise")
def _sub(ad, n, g):
    (dy,) = g
    return dy, -dy


@defvjp("Mul", broadcast="elementwise")
def _mul(ad, n, g):  # a square x * x: one pass, 2 x dy, not two products summed by the driver
    (a, c), (dy,) = n.inputs, g
    if a.name == c.name:
        return dy * (a + a), None
    return dy * c, dy * a


@defvjp("Div", broadcast="elementwise")
def _div(ad, n, g):  # y = a / c: da = dy / c, dc = -dy a / c^2 = -dy y / c
    (a, c), (dy,) = n.inputs, g
    return dy / c, -(dy * n.y / c)


@defdx("Pow", broadcast="elementwise")
def _pow(n, dy):  # d/dx x^e = e x^(e-1); the exponent is treated as a constant
    x, e = n.inputs
    return dy * (e * x ** (e - 1.0))


@defvjp("Where", broadcast="elementwise")
def _where(ad, n, g):  # y = cond ? a : c
    (cond, _, _), (dy,) = n.inputs, g
    return None, op.Where(cond, dy, 0.0), op.Where(cond, 0.0, dy)


defdx("Identity")(lambda n, dy: dy)
defdx("Neg")(lambda n, dy: -dy)
defdx("Abs")(lambda n, dy: dy * op.Sign(n.x))
defdx("Exp")(lambda n, dy: dy * n.y)
defdx("Log")(lambda n, dy: dy / n.x)
defdx("Sqrt")(lambda n, dy: dy * 0.5 / n.y)
defdx("Reciprocal")(lambda n, dy: -(dy * (n.y * n.y)))
defdx("Cast")(lambda n, dy: op.Cast(dy, to=n.x.dtype))  # back to the input's element type

defzero("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "Sign", "Floor",
        "Ceil", "Round")
