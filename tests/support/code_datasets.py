"""Small problems in the shapes of HumanEval, MBPP and APPS/CodeContests/LiveCodeBench rows.

Each problem: the dataset record (as the dataset ships it), its canonical solution and a
wrong ("shifted") one. HumanEval tests are the datasets' own (METADATA, helper imports,
deepcopied inputs, seeded and unseeded random inputs, hundreds of chained calls).
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- HumanEval

HE_HAS_CLOSE = {
    "task_id": "HumanEval/0",
    "entry_point": "has_close_elements",
    "prompt": (
        "from typing import List\n\n\n"
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        '    """ Check if in given list of numbers, are any two numbers closer to each other'
        ' than\n    given threshold.\n    """\n'
    ),
    "test": """

METADATA = {
    'author': 'jt',
    'dataset': 'test'
}


def check(candidate):
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True
    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.8) == False
    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True
    assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 0.5) == False

""",
    "canonical": (
        "    for idx, elem in enumerate(numbers):\n"
        "        for idx2, elem2 in enumerate(numbers):\n"
        "            if idx != idx2:\n"
        "                distance = abs(elem - elem2)\n"
        "                if distance < threshold:\n"
        "                    return True\n\n"
        "    return False\n"
    ),
    "wrong": "    return len(numbers) > 5\n",
}

HE_TRUNCATE = {
    "task_id": "HumanEval/2",
    "entry_point": "truncate_number",
    "prompt": (
        "\n\ndef truncate_number(number: float) -> float:\n"
        '    """ Return the decimal part of the number. """\n'
    ),
    "test": """

METADATA = {
    'author': 'jt',
    'dataset': 'test'
}


def check(candidate):
    assert candidate(3.5) == 0.5
    assert abs(candidate(1.33) - 0.33) < 1e-6
    assert abs(candidate(123.456) - 0.456) < 1e-6
""",
    "canonical": "    return number % 1.0\n",
    "wrong": "    return number - round(number)\n",
}

HE_SUM_PRODUCT = {
    "task_id": "HumanEval/8",
    "entry_point": "sum_product",
    "prompt": (
        "from typing import List, Tuple\n\n\n"
        "def sum_product(numbers: List[int]) -> Tuple[int, int]:\n"
        '    """ (sum, product) of a list. """\n'
    ),
    "test": """

METADATA = {
    'author': 'jt',
    'dataset': 'test'
}


def check(candidate):
    assert candidate([]) == (0, 1)
    assert candidate([1, 1, 1]) == (3, 1)
    assert candidate([100, 0]) == (100, 0)
    assert candidate([3, 5, 7]) == (3 + 5 + 7, 3 * 5 * 7)
    assert candidate([10]) == (10, 10)
""",
    "canonical": (
        "    sum_value = 0\n    prod_value = 1\n\n    for n in numbers:\n"
        "        sum_value += n\n        prod_value *= n\n    return sum_value, prod_value\n"
    ),
    "wrong": "    return sum(numbers), 0\n",
}

HE_LONGEST = {
    "task_id": "HumanEval/12",
    "entry_point": "longest",
    "prompt": (
        "from typing import List, Optional\n\n\n"
        "def longest(strings: List[str]) -> Optional[str]:\n"
        '    """ The longest string, the first one if several; None for an empty list. """\n'
    ),
    "test": """

METADATA = {
    'author': 'jt',
    'dataset': 'test'
}


def check(candidate):
    assert candidate([]) == None
    assert candidate(['x', 'y', 'z']) == 'x'
    assert candidate(['x', 'yyy', 'zzzz', 'www', 'kkkk', 'abc']) == 'zzzz'
""",
    "canonical": (
        "    if not strings:\n        return None\n\n"
        "    maxlen = max(len(x) for x in strings)\n    for s in strings:\n"
        "        if len(s) == maxlen:\n            return s\n"
    ),
    "wrong": "    return max(strings, key=len) if strings else ''\n",
}

# seeded random inputs, deepcopied before the call, and a helper from the prompt (poly)
HE_FIND_ZERO = {
    "task_id": "HumanEval/32",
    "entry_point": "find_zero",
    "prompt": (
        "import math\n\n\n"
        "def poly(xs: list, x: float):\n"
        '    """ Evaluates polynomial with coefficients xs at point x. """\n'
        "    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])\n\n\n"
        "def find_zero(xs: list):\n"
        '    """ A zero of the polynomial xs (even length, largest coefficient non zero). """\n'
    ),
    "test": """

METADATA = {}


def check(candidate):
    import math
    import random
    rng = random.Random(42)
    import copy
    for _ in range(100):
        ncoeff = 2 * rng.randint(1, 4)
        coeffs = []
        for _ in range(ncoeff):
            coeff = rng.randint(-10, 10)
            if coeff == 0:
                coeff = 1
            coeffs.append(coeff)
        solution = candidate(copy.deepcopy(coeffs))
        assert math.fabs(poly(coeffs, solution)) < 1e-4

""",
    "canonical": (
        "    begin, end = -1., 1.\n"
        "    while poly(xs, begin) * poly(xs, end) > 0:\n"
        "        begin *= 2.0\n        end *= 2.0\n"
        "    while end - begin > 1e-10:\n"
        "        center = (begin + end) / 2.0\n"
        "        if poly(xs, center) * poly(xs, begin) > 0:\n"
        "            begin = center\n        else:\n            end = center\n"
        "    return begin\n"
    ),
    "wrong": "    return 0.0\n",
}

# unseeded random inputs from the prompt's encode_cyclic helper; 100 chained calls
HE_DECODE_CYCLIC = {
    "task_id": "HumanEval/38",
    "entry_point": "decode_cyclic",
    "prompt": (
        "\n\ndef encode_cyclic(s: str):\n"
        '    """ returns encoded string by cycling groups of three characters. """\n'
        "    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]\n"
        "    groups = [(group[1:] + group[0]) if len(group) == 3 else group"
        " for group in groups]\n"
        '    return "".join(groups)\n\n\n'
        "def decode_cyclic(s: str):\n"
        '    """ takes as input string encoded with encode_cyclic. Returns decoded string. """\n'
    ),
    "test": """

METADATA = {}


def check(candidate):
    from random import randint, choice
    import string

    letters = string.ascii_lowercase
    for _ in range(100):
        str = ''.join(choice(letters) for i in range(randint(10, 20)))
        encoded_str = encode_cyclic(str)
        assert candidate(encoded_str) == str

""",
    "canonical": "    return encode_cyclic(encode_cyclic(s))\n",
    "wrong": "    return encode_cyclic(s)\n",
}

# unseeded random inputs and many chained calls (the dataset's own check)
HE_ADD = {
    "task_id": "HumanEval/53",
    "entry_point": "add",
    "prompt": '\n\ndef add(x: int, y: int):\n    """Add two numbers x and y"""\n',
    "test": """

METADATA = {}


def check(candidate):
    import random

    assert candidate(0, 1) == 1
    assert candidate(1, 0) == 1
    assert candidate(2, 3) == 5
    assert candidate(5, 7) == 12
    assert candidate(7, 5) == 12

    for i in range(100):
        x, y = random.randint(0, 1000), random.randint(0, 1000)
        assert candidate(x, y) == x + y

""",
    "canonical": "    return x + y\n",
    # right on the fixed cases, wrong on random draws whose sum is a multiple of 7
    "wrong": "    return x + y if (x + y) % 7 else x + y + 1\n",
}

# the check deepcopies its inputs and compares against them after the call
HE_SORT_COPY = {
    "task_id": "Custom/sort_copy",
    "entry_point": "sort_array",
    "prompt": (
        "def sort_array(array):\n"
        '    """ A sorted copy of array: ascending if first + last is odd, else descending;'
        ' array itself is left as is. """\n'
    ),
    "test": """
import copy

def check(candidate):
    cases = [[], [5], [2, 4, 3, 0, 1, 5], [2, 4, 3, 0, 1, 5, 6], [21, 14, 23, 11]]
    for arr in cases:
        before = copy.deepcopy(arr)
        got = candidate(copy.deepcopy(arr))
        assert arr == before
        if not arr:
            assert got == []
        else:
            assert got == sorted(arr, reverse=(arr[0] + arr[-1]) % 2 == 0)
""",
    "canonical": (
        "    return [] if len(array) == 0 else "
        "sorted(array, reverse=(array[0] + array[-1]) % 2 == 0)\n"
    ),
    "wrong": "    return sorted(array)\n",
}

HUMANEVAL = [
    HE_HAS_CLOSE,
    HE_TRUNCATE,
    HE_SUM_PRODUCT,
    HE_LONGEST,
    HE_FIND_ZERO,
    HE_DECODE_CYCLIC,
    HE_ADD,
    HE_SORT_COPY,
]


def he_solution(p: dict, body: str) -> str:
    """A HumanEval completion as a model writes it: the prompt plus the body."""
    return p["prompt"] + body


def he_record(p: dict) -> dict:
    """The dataset row minus the solution (what a data file holds)."""
    return {k: p[k] for k in ("task_id", "prompt", "entry_point", "test")}


# ----------------------------------------------------------------------------- MBPP

MBPP = [
    {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": (
            "def similar_elements(test_tup1, test_tup2):\n"
            "  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) "
        ),
        "wrong": "def similar_elements(a, b):\n  return tuple(set(a) | set(b))\n",
        "test_list": [
            "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
            "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
            "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given "
        "character from the string.",
        "code": (
            "def remove_Occ(s,ch): \n    for i in range(len(s)): \n        if (s[i] == ch): \n"
            "            s = s[0 : i] + s[i + 1:] \n            break\n"
            "    for i in range(len(s) - 1,-1,-1):  \n        if (s[i] == ch): \n"
            "            s = s[0 : i] + s[i + 1:] \n            break\n    return s "
        ),
        "wrong": "def remove_Occ(s, ch):\n    return s.replace(ch, '', 1)\n",
        "test_list": [
            'assert remove_Occ("hello","l") == "heo"',
            'assert remove_Occ("abcda","a") == "bcd"',
            'assert remove_Occ("PHP","P") == "H"',
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 4,
        "text": "Write a function to find the largest integers from a given list of numbers "
        "using heap queue algorithm.",
        "code": (
            "import heapq as hq\ndef heap_queue_largest(nums,n):\n"
            "  largest_nums = hq.nlargest(n, nums)\n  return largest_nums"
        ),
        "wrong": "def heap_queue_largest(nums, n):\n  return sorted(nums)[:n]\n",
        "test_list": [
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
            "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {  # test_setup_code and test_imports, and a float comparison
        "task_id": "sanitized-style",
        "text": "Write a function to find the area of a circle.",
        "code": "import math\ndef circle_area(r):\n    return math.pi * r * r\n",
        "wrong": "def circle_area(r):\n    return 3 * r * r\n",
        "test_list": [
            "assert math.isclose(circle_area(10), 314.1592653589793, rel_tol=0.001)",
            "assert math.isclose(circle_area(radius), 12.566370614359172, rel_tol=0.001)",
        ],
        "test_setup_code": "radius = 2",
        "test_imports": ["import math"],
        "challenge_test_list": [],
    },
    {  # program objects as arguments (MBPP 601)
        "task_id": 601,
        "text": "Write a function to find the longest chain which can be formed from the "
        "given set of pairs.",
        "code": (
            "class Pair(object): \n\tdef __init__(self, a, b): \n\t\tself.a = a \n"
            "\t\tself.b = b \ndef max_chain_length(arr, n): \n\tmax = 0\n"
            "\tmcl = [1 for i in range(n)] \n\tfor i in range(1, n): \n"
            "\t\tfor j in range(0, i): \n"
            "\t\t\tif (arr[i].a > arr[j].b and mcl[i] < mcl[j] + 1): \n"
            "\t\t\t\tmcl[i] = mcl[j] + 1\n\tfor i in range(n): \n"
            "\t\tif (max < mcl[i]): \n\t\t\tmax = mcl[i] \n\treturn max"
        ),
        "wrong": (
            "class Pair(object):\n    def __init__(self, a, b):\n        self.a, self.b = a, b\n"
            "def max_chain_length(arr, n):\n    return n\n"
        ),
        "test_list": [
            "assert max_chain_length([Pair(5, 24), Pair(15, 25),Pair(27, 40), Pair(50, 60)],"
            " 4) == 3",
            "assert max_chain_length([Pair(1, 2), Pair(3, 4),Pair(5, 6), Pair(7, 8)], 4) == 4",
            "assert max_chain_length([Pair(19, 10), Pair(11, 12),Pair(13, 14), Pair(15, 16), "
            "Pair(31, 54)], 5) == 5",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
]


def mbpp_record(p: dict) -> dict:
    keys = ("task_id", "text", "test_list", "test_setup_code", "test_imports")
    return {k: p[k] for k in keys if k in p}


# ----------------------------------------------------------------------------- stdin/stdout

STDIO = [
    {  # APPS: input_output as a JSON string, outputs with trailing newlines
        "name": "sum",
        "ref": {
            "input_output": '{"inputs": ["1 2\\n", "10 -3\\n", "1000000000 1000000000\\n"],'
            ' "outputs": ["3\\n", "7\\n", "2000000000\\n"]}'
        },
        "canonical": "a, b = map(int, input().split())\nprint(a + b)\n",
        "wrong": "a, b = map(int, input().split())\nprint(a + b + 1)\n",
    },
    {  # CodeContests: {"input": [...], "output": [...]}; many tokens over several lines
        "name": "sort",
        "ref": {
            "input": ["5\n3 1 4 1 5\n", "3\n9 8 7\n"],
            "output": ["1 1 3 4 5\n", "7 8 9\n"],
        },
        "canonical": (
            "import sys\ndata = sys.stdin.buffer.read().split()\nn = int(data[0])\n"
            "xs = sorted(map(int, data[1:1 + n]))\n"
            "sys.stdout.write('\\n'.join(map(str, xs)) + '\\n')\n"  # one per line: tokens ok
        ),
        "wrong": (
            "import sys\ndata = sys.stdin.read().split()\n"
            "print(*sorted(map(int, data[1:]), reverse=True))\n"
        ),
    },
    {  # LiveCodeBench: a list of cases; float answers with tolerance
        "name": "mean",
        "ref": [
            {"input": "3\n1 2 4\n", "output": "2.3333333333\n", "testtype": "stdin"},
            {"input": "2\n1 2\n", "output": "1.5\n", "testtype": "stdin"},
        ],
        "canonical": (
            "n = int(input())\nxs = list(map(int, input().split()))\nprint(sum(xs) / n)\n"
        ),
        "wrong": "n = int(input())\nxs = list(map(int, input().split()))\nprint(sum(xs) // n)\n",
    },
    {  # plain inputs/outputs without fn_name, multiple queries, reads open(0)
        "name": "queries",
        "ref": {
            "inputs": ["3\n1\n2\n3\n", "1\n10\n"],
            "outputs": ["1\n4\n9\n", "100\n"],
        },
        "canonical": (
            "lines = open(0).read().split()\nfor x in lines[1:]:\n    print(int(x) ** 2)\n"
        ),
        "wrong": "lines = open(0).read().split()\nfor x in lines[1:]:\n    print(int(x) * 2)\n",
    },
]
