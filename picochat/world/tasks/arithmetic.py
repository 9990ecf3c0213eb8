"""arithmetic: a + b and a - b (a >= b, operands 0..max_operand), asked and answered in one line.

    "What is 23 + 45?" -> "23 + 45 = 68."

Judged (`check_arithmetic`): the number the response asserts (the last one after "=", "is",
"equals", "等于", "是", ..., else the last integer) must be the truth; numbers other than the
operands and the answer halve the credit.
"""

from __future__ import annotations

import random
import re

from picochat.world.text import INTEGER

_ASSERT = re.compile(r"(?:=|＝|\bis\b|\bequals\b|\bmakes\b|等于|得|是|为|：|:)\s*(-?\d+)", re.I)

ARITH_QUESTIONS: dict[str, dict[str, list[str]]] = {
    "en": {
        "+": ["What is {a} + {b}?", "What is {a} plus {b}?", "Compute {a} + {b}.", "{a} + {b} = ?",
              "Can you add {a} and {b}?", "What is the sum of {a} and {b}?"],
        "-": ["What is {a} - {b}?", "What is {a} minus {b}?", "Compute {a} - {b}.", "{a} - {b} = ?",
              "What is {b} subtracted from {a}?", "Take {b} away from {a}. What is left?"],
    },
    "zh": {
        "+": ["{a}加{b}等于多少？", "{a}加上{b}是多少？", "请算一下{a}加{b}。", "算一算：{a} + {b} = ？",
              "{a}和{b}的和是多少？"],
        "-": ["{a}减{b}等于多少？", "{a}减去{b}是多少？", "请算一下{a}减{b}。", "算一算：{a} - {b} = ？",
              "从{a}里减去{b}，还剩多少？"],
    },
}
ARITH_ANSWERS: dict[str, dict[str, list[str]]] = {
    "en": {"+": ["{a} + {b} = {c}.", "{a} + {b} = {c}.", "{a} plus {b} is {c}."],
           "-": ["{a} - {b} = {c}.", "{a} - {b} = {c}.", "{a} minus {b} is {c}."]},
    "zh": {"+": ["{a}加{b}等于{c}。"], "-": ["{a}减{b}等于{c}。"]},
}


def make_arithmetic(a: int, b: int, op: str, lang: str, rng: random.Random):
    c = a + b if op == "+" else a - b
    q = rng.choice(ARITH_QUESTIONS[lang][op]).format(a=a, b=b)
    ans = rng.choice(ARITH_ANSWERS[lang][op]).format(a=a, b=b, c=c)
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], \
        {"a": a, "b": b, "op": op, "answer": c}


def check_arithmetic(meta: dict, text: str, notes: list[str]) -> float:
    """Correctness in [0, 1] of an answer to a + b or a - b with gold `meta`; why points were lost
    goes to `notes`."""
    ints = [int(m.group(0)) for m in INTEGER.finditer(text)]
    asserted = [int(m.group(1)) for m in _ASSERT.finditer(text)]
    value = asserted[-1] if asserted else (ints[-1] if ints else None)
    if value != meta["answer"]:
        notes.append(f"arithmetic: expected {meta['answer']}, answered {value}")
        return 0.0
    extra = set(ints) - {meta["a"], meta["b"], meta["answer"]}
    if extra:
        notes.append(f"arithmetic: other numbers {sorted(extra)}")
        return 0.5
    return 1.0
