"""Built-in prompts: Python code completion (what the bundled suite is for), and text unlike its
training data (prose, SQL, shell, C, markup), where drafts agree with the target less."""

CODE_PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "import os\nimport sys\n\n\ndef main(argv):\n    parser = argparse.ArgumentParser(",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "def read_lines(path):\n    with open(path) as f:\n",
    "    def __repr__(self):\n        return ",
    "for key, value in sorted(mapping.items()):\n    if ",
    "def test_parse_empty_string(self):\n        self.assertEqual(",
    "try:\n    import json\nexcept ImportError:\n    json = None\n\n\ndef dumps(obj, indent=",
]

OTHER_PROMPTS = [
    "The committee met on Tuesday to discuss the budget for next year. After a long debate, ",
    "SELECT customers.name, COUNT(orders.id) AS total\nFROM customers\nJOIN orders ON ",
    "#!/bin/sh\nset -e\n\nfor f in *.log; do\n    gzip ",
    "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    for (int i = 0; i < argc; i++) {\n",
    "<html>\n  <head>\n    <title>Weekly report</title>\n  </head>\n  <body>\n    <h1>",
    "# Installation\n\n1. Download the archive.\n2. Unpack it into your home folder.\n3. ",
    "services:\n  web:\n    image: nginx:latest\n    ports:\n      - ",
    "Dear Ms. Alvarez,\n\nThank you for your letter of 3 March. I am writing to ",
]


def mixed_prompts() -> list[str]:
    """The realistic workload's prompts: code and other text, taking turns."""
    return [p for pair in zip(CODE_PROMPTS, OTHER_PROMPTS, strict=True) for p in pair]


WORKLOADS = {
    "realistic": "outputs end at EOS (up to --max-tokens, default 128); every third request samples at "
    "temperature 0.7 with a seed, the rest are greedy; code prompts and other text take turns",
    "equal": "every output runs to --max-tokens (default 64; ignore_eos), all greedy, code prompts: "
    "plain decoding's best case (rows join and leave together)",
}
MAX_TOKENS = {"realistic": 128, "equal": 64}
