"""Built-in code-completion prompts: what the bundled Python-code suite is for."""

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
