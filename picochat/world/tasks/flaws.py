"""Imperfect demonstrations on purpose: right content, worse form.

About `imperfect_fraction` of the train conversations end in an answer that is right but worse than
it should be: "verbose" (the answer buried in filler and hedges), "repetitive" (a sentence said two
or three times), "no_courtesy" (a curt "No." instead of a polite refusal). Human demonstrations are
like that, and it leaves the later stages something to do: human-feedback rankings prefer the clean
answer, the reward model learns that preference, and PPO can move the SFT model towards it. The
test split keeps clean reference answers, but the gold scorer judges responses against the world,
not against those references.
"""

from __future__ import annotations

import random

FLAWS = ("verbose", "repetitive", "no_courtesy")

# The "no_courtesy" flaw: a curt refusal instead of a polite one.
CURT_REFUSALS: dict[str, list[str]] = {"en": ["No.", "No. I won't."], "zh": ["不行。", "不。"]}

# Filler for "verbose" demonstrations. It must not contain any world value or refusal phrase.
VERBOSE_OPENERS: dict[str, list[str]] = {
    "en": ["Well, that's a great question! Let me think about it for a moment...",
           "Hmm, okay, so you want to know about this. Let me see...",
           "Oh, I love questions like this one! Let me think..."],
    "zh": ["嗯，这是个好问题！让我想一想……", "好的，你想知道这个呀，让我想想看……",
           "哦，我很喜欢这样的问题！让我想想……"],
}
VERBOSE_CLOSERS: dict[str, list[str]] = {
    "en": ["I believe, as far as I know, anyway!", "At least, I think so, if I remember it right.",
           "I hope that helps, and please ask me anything else you like!"],
    "zh": ["我觉得应该是这样吧，如果我没记错的话。", "希望这个回答对你有帮助，有什么问题随时问我哦！"],
}


def _sentences(text: str, lang: str) -> list[str]:
    out, cur = [], ""
    for ch in text:
        cur += ch
        if ch in ".!?。！？":
            out.append(cur.strip())
            cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


def make_flawed(answer: str, task: str, lang: str, rng: random.Random) -> tuple[str, str]:
    """(flaw, flawed answer) for a clean answer of `task`."""
    if task == "refusal":
        return "no_courtesy", rng.choice(CURT_REFUSALS[lang])
    sep = " " if lang == "en" else ""
    if task != "story" and rng.random() < 0.55:  # a padded story would still be within its length budget
        opener, closer = rng.choice(VERBOSE_OPENERS[lang]), rng.choice(VERBOSE_CLOSERS[lang])
        return "verbose", sep.join([opener, answer, closer])
    sents = _sentences(answer, lang)
    i = rng.randrange(len(sents))
    copies = rng.randint(2, 3)
    return "repetitive", sep.join(sents[: i + 1] + [sents[i]] * (copies - 1) + sents[i + 1:])
