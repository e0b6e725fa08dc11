"""Precision/recall set for the math verifier: (notation, gold, response) triples.

``MATCH``: the response's answer equals the gold answer; ``NO_MATCH``: it does not (a
reward here is a false positive, a bug RL will find). Written by hand across notations;
the issue-14 false positives of the fast path are the ``space``/``list``/``command``
rows. The last ``\\boxed`` counts; an unclosed last box (a truncated generation) is
skipped, so an earlier box counts (``boxes`` rows).
"""

from __future__ import annotations


def b(answer: str) -> str:
    """A response whose final answer is ``answer``, boxed."""
    return f"So the answer is $\\boxed{{{answer}}}$."


def _rows(notation: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    return [(notation, gold, b(pred)) for gold, pred in pairs]


MATCH: list[tuple[str, str, str]] = [
    *_rows("integer", [("42", "42"), ("42", " 42 "), ("-7", "-7"), ("+5", "5"), ("7", "007")]),
    *_rows("integer", [("12", "12."), ("5", "$5$"), ("0", "0"), ("579", "579")]),
    *_rows(
        "decimal",
        [("0.5", "0.50"), ("0.5", ".5"), ("2.50", "2.5"), ("3", "3.0"), ("-1.25", "-1.250")],
    ),
    *_rows(
        "fraction",
        [
            ("\\frac{1}{2}", "\\dfrac{1}{2}"),
            ("\\frac{1}{2}", "\\tfrac{1}{2}"),
            ("\\frac{1}{2}", "1/2"),
            ("\\frac{1}{2}", "\\frac12"),
            ("\\frac{3}{4}", "0.75"),
            ("-\\frac{2}{3}", "\\frac{-2}{3}"),
            ("-\\frac{2}{3}", "-2/3"),
            ("\\frac{6}{8}", "\\frac{3}{4}"),
            ("\\frac{7}{2}", "3.5"),
            ("1.5", "\\frac{3}{2}"),
            ("2/4", "1/2"),
            ("\\frac{\\pi}{4}", "\\dfrac{\\pi}{4}"),
            ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
            ("\\frac{1}{2}", "\\frac {1} {2}"),
            ("\\frac{1}{2}", "\\displaystyle\\frac{1}{2}"),
        ],
    ),
    *_rows(
        "percent",
        [("50\\%", "50"), ("0.25", "25\\%"), ("12.5\\%", "12.5\\%"), ("10\\%", "10\\%")],
    ),
    *_rows(
        "thousands",
        [
            ("1000", "1,000"),
            ("1000", "1{,}000"),
            ("1000", "1\\,000"),
            ("1234567", "1,234,567"),
            ("2100", "2,100"),
            ("1,000", "1000"),
            ("-5,000", "-5000"),
            ("1000.5", "1,000.5"),
            ("12345", "12,345"),
            ("1000000", "1{,}000{,}000"),
        ],
    ),
    *_rows(
        "set",
        [
            ("\\{1,2\\}", "\\{2,1\\}"),
            ("\\{1,2,3\\}", "\\{3, 2, 1\\}"),
            ("\\{-1, 1\\}", "\\{1,-1\\}"),
            ("\\{0\\}", "\\{0\\}"),
            ("\\{\\frac{1}{2}, 2\\}", "\\{2, 0.5\\}"),
            ("2, 3", "3, 2"),
            ("1, 2", "1,2"),
        ],
    ),
    *_rows(
        "interval",
        [
            ("[1,2]", "[1, 2]"),
            ("(1,2]", "(1, 2]"),
            ("(-\\infty, 0)", "(-\\infty,0)"),
            ("[0,\\infty)", "[0, \\infty)"),
            ("(-\\infty,-1)\\cup(1,\\infty)", "(-\\infty, -1) \\cup (1, \\infty)"),
            ("[\\frac{1}{2}, 3)", "[0.5, 3)"),
            ("\\left[1, 2\\right]", "[1,2]"),
        ],
    ),
    *_rows(
        "tuple",
        [
            ("(3,-4)", "(3, -4)"),
            ("(1,2,3)", "(1, 2, 3)"),
            ("\\left(2, 5\\right)", "(2,5)"),
            ("(0, 0)", "(0,0)"),
        ],
    ),
    *_rows(
        "radical",
        [
            ("\\sqrt{2}", "\\sqrt{2}"),
            ("2\\sqrt{2}", "\\sqrt{8}"),
            ("\\sqrt{12}", "2\\sqrt{3}"),
            ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"),
            ("\\sqrt[3]{8}", "2"),
            ("3\\sqrt{5}", "\\sqrt{45}"),
            ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
            ("\\sqrt{2}", "\\sqrt2"),
        ],
    ),
    *_rows(
        "unit",
        [
            ("10", "10\\text{ cm}"),
            ("5", "5 \\text{ meters}"),
            ("90^\\circ", "90"),
            ("45", "45^\\circ"),
            ("3", "3\\text{ hours}"),
            ("60^{\\circ}", "60"),
            ("12", "12\\text{ cm}^2"),
        ],
    ),
    *_rows(
        "expression",
        [
            ("(x+1)^2", "x^2+2x+1"),
            ("x^2-1", "(x-1)(x+1)"),
            ("2x", "x+x"),
            ("2\\pi", "2 \\pi"),
            ("\\frac{\\pi}{2}", "\\pi/2"),
            ("e^{2}", "e^2"),
            ("x=2", "2"),
            ("\\pi r^2", "\\pi r^{2}"),
            ("a+b", "b+a"),
        ],
    ),
    *_rows(
        "negative",
        [("-3", "-3.0"), ("-\\frac{1}{2}", "-0.5"), ("-2", "- 2"), ("-10", "-10")],
    ),
    *_rows(
        "scientific",
        [
            ("1500", "1.5\\times10^{3}"),
            ("1.5\\times 10^3", "1500"),
            ("3\\times10^{-2}", "0.03"),
            ("2\\cdot 10^{4}", "20000"),
            ("10^{6}", "1000000"),
        ],
    ),
    *_rows(
        "choice",
        [("\\text{(A)}", "A"), ("\\text{B}", "B"), ("\\textbf{C}", "C"), ("D", "\\text{D}")],
    ),
    *_rows(
        "matrix",
        [
            (
                "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
                "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
            ),
            ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        ],
    ),
    *_rows(
        "command",
        [
            ("\\left(1,2\\right)", "(1,2)"),
            ("\\rightarrow", "\\rightarrow"),
            ("\\leftarrow", "\\left\\leftarrow"),
            ("\\frac{1}{2}", "\\!\\frac{1}{2}"),
        ],
    ),
    ("boxes", "5", "First \\boxed{3}; correcting that: \\boxed{5}."),
    ("boxes", "5", "\\boxed{5} and then \\boxed{6"),
    ("boxes", "5", "\\boxed{\\boxed{5}}"),
    ("boxes", "7", "The answer is \\boxed 7 done."),
    ("boxes", "7", "\\fbox{7}"),
    ("boxes", "\\{1,2\\}", "so \\boxed{\\{1,2\\}}"),
    ("boxes", "\\frac{1}{2}", "\\boxed{1} then \\boxed{\\frac{1}{2}}."),
]

NO_MATCH: list[tuple[str, str, str]] = [
    *_rows(
        "space",
        [
            ("23", "2 3"),
            ("2 3", "23"),
            ("11", "1 1"),
            ("2024", "20 24"),
            ("100", "1 00"),
            ("23", "2\\,3"),
            ("23", "2\\ 3"),
            ("23", "2\\;3"),
            ("23", "2~3"),
            ("12", "1\\quad 2"),
            ("105", "10 5"),
            ("1.5", "1 .5"),
        ],
    ),
    *_rows(
        "list",
        [
            ("2100", "2, 100"),
            ("2, 100", "2100"),
            ("3125", "3, 125"),
            ("3, 125", "3125"),
            ("1234", "12,34"),
            ("12", "1,2"),
            ("1000", "1, 000"),
            ("12345", "1,2345"),
            ("1000, 2", "1, 000, 2"),
            ("2, 100, 300", "2100300"),
            ("4, 500", "4,500"),
        ],
    ),
    *_rows(
        "command",
        [
            ("\\rightarrow", "\\leftarrow"),
            ("\\leftarrow", "\\rightarrow"),
            ("\\Leftarrow", "\\Rightarrow"),
            ("\\leftrightarrow", "\\rightarrow"),
            ("\\leftarrow", "arrow"),
            ("\\pi", "\\phi"),
        ],
    ),
    *_rows(
        "integer",
        [("5", "6"), ("42", "24"), ("-7", "7"), ("0", "1"), ("100", "1000"), ("10", "01")],
    ),
    *_rows(
        "decimal",
        [
            ("0.5", "0.05"),
            ("2.5", "25"),
            ("3.14", "3.15"),
            ("0.333", "\\frac{1}{3}"),
            ("1.5", "15"),
        ],
    ),
    *_rows(
        "fraction",
        [
            ("\\frac{1}{2}", "\\frac{2}{1}"),
            ("\\frac{1}{2}", "2"),
            ("1/2", "2/1"),
            ("\\frac{3}{4}", "\\frac{4}{3}"),
            ("\\frac{1}{3}", "0.5"),
            ("-\\frac{2}{3}", "\\frac{2}{3}"),
            ("\\frac{1}{3}", "0.33"),
            ("\\frac{12}{5}", "\\frac{1}{25}"),
            ("\\dfrac{1}{2}", "\\dfrac{1}{3}"),
        ],
    ),
    *_rows(
        "percent",
        [("50\\%", "5"), ("25\\%", "25.5"), ("10\\%", "1"), ("0.25", "2.5\\%")],
    ),
    *_rows(
        "thousands",
        [
            ("1000", "100"),
            ("1,000", "10,000"),
            ("1,000", "1,001"),
            ("1234567", "1,234,568"),
            ("1000", "1,0000"),
            ("1,000.5", "1000.05"),
            ("1000", "1{,}00"),
        ],
    ),
    *_rows(
        "set",
        [
            ("\\{1,2\\}", "\\{1,3\\}"),
            ("\\{1,2,3\\}", "\\{1,2\\}"),
            ("\\{-1,1\\}", "\\{1\\}"),
            ("\\{1, 2\\}", "\\{12\\}"),
            ("1, 2", "1, 3"),
        ],
    ),
    *_rows(
        "interval",
        [
            ("[1,2)", "[1,2]"),
            ("(1,2]", "[1,2]"),
            ("(-\\infty,0)", "(-\\infty,0]"),
            ("[0,\\infty)", "(0,\\infty)"),
            ("(1,3)", "(1,4)"),
            ("(-\\infty,-1)\\cup(1,\\infty)", "(-1,1)"),
        ],
    ),
    *_rows(
        "tuple",
        [("(1,2)", "(2,1)"), ("(3,-4)", "(3,4)"), ("(1,2,3)", "(1,2)"), ("(0,5)", "(5,0)")],
    ),
    *_rows(
        "radical",
        [
            ("\\sqrt{2}", "\\sqrt{3}"),
            ("2\\sqrt{2}", "\\sqrt{2}"),
            ("\\sqrt{8}", "8"),
            ("\\sqrt[3]{8}", "\\sqrt{8}"),
            ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}"),
        ],
    ),
    *_rows(
        "unit",
        [
            ("10\\text{ cm}", "100"),
            ("10", "100\\text{ cm}"),
            ("45^\\circ", "90^\\circ"),
            ("5 \\text{ m}", "6 \\text{ m}"),
        ],
    ),
    *_rows(
        "expression",
        [
            ("(x+1)^2", "x^2+1"),
            ("x^2-1", "x^2+1"),
            ("2x", "x^2"),
            ("\\pi", "3.14"),
            ("2\\pi", "\\pi"),
            ("e^2", "2e"),
            ("x=2", "x=3"),
            ("\\ln 2", "\\ln 3"),
        ],
    ),
    *_rows(
        "negative",
        [("-3", "3"), ("-\\frac{1}{2}", "\\frac{1}{2}"), ("-0.5", "0.5"), ("3", "-3")],
    ),
    *_rows(
        "scientific",
        [("1500", "1.5\\times10^{4}"), ("0.03", "3\\times10^{-3}"), ("1000", "10^{4}")],
    ),
    *_rows(
        "choice",
        [("\\text{(A)}", "\\text{(B)}"), ("A", "B"), ("C", "\\text{(D)}")],
    ),
    *_rows(
        "matrix",
        [("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\4&3\\end{pmatrix}")],
    ),
    ("boxes", "5", "\\boxed{5}, no wait: \\boxed{6}"),
    ("boxes", "5", "\\boxed{\\boxed{6}}"),
    ("boxes", "5", "The answer is 5."),
    ("boxes", "5", "\\boxed{5"),
    ("boxes", "5", "\\boxed{}"),
    ("boxes", "7", "\\boxed 8 not \\boxed{7"),
]
