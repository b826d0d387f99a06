"""The command line parser of every meterproxy command: argparse, with each error on one line."""

from __future__ import annotations

import argparse
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line naming the option, where argparse would print the whole usage first.
        self.exit(2, f"{self.prog}: {message} (see --help)\n")
