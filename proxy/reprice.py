"""meterproxy reprice: a copy of a record file priced with another config; the original is untouched."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson

from proxy.arguments import ArgumentParser
from proxy.calls import cost_of, not_billed
from proxy.config import Config, ConfigError
from proxy.configfile import load_config
from proxy.filters import DEFAULTS
from proxy.pricing import find_price
from proxy.sources import is_gzip
from proxy.usage import Usage


def reprice(record: dict[str, Any], config: Config) -> bool:
    """Re-price one record in place from its provider, model and tokens; True when a price was found."""
    provider = config.providers.get(str(record.get("provider")))
    model = record.get("model")
    response_model = record.get("response_model")
    price = None
    if provider is not None and isinstance(model, str):
        price = find_price(provider, model, response_model if isinstance(response_model, str) else None)
    usage = None
    # A record of an older writer has no usage_source: its usage came from the provider, as reports read it.
    if record.get("usage_source", DEFAULTS["usage_source"]) in ("provider", "estimated"):
        usage = Usage(
            input_tokens=_tokens(record, "input_tokens"),
            output_tokens=_tokens(record, "output_tokens"),
            total_tokens=_tokens(record, "total_tokens"),
            cached_tokens=_tokens(record, "cached_input_tokens"),
            cache_write_tokens=_tokens(record, "cache_write_tokens"),
            # An older writer counted none: all its writes are priced at cache_write, as it priced them.
            cache_write_1h_tokens=_tokens(record, "cache_write_1h_tokens"),
            reasoning_tokens=_tokens(record, "reasoning_tokens"),
        )
    status, error = record.get("status_code"), record.get("error")
    # Costs of 0 without usage are the writer's word that nothing was billed (a call it never sent).
    written = record.get("total_cost")
    unbilled = usage is None and type(written) in (int, float) and written == 0
    cost = cost_of(price, usage, unbilled or (isinstance(status, int) and not_billed(status, error)))
    record["input_cost"] = cost.input_cost if cost is not None else None
    record["output_cost"] = cost.output_cost if cost is not None else None
    record["total_cost"] = cost.total_cost if cost is not None else None
    record["priced"] = price is not None
    record["price"] = cost.applied.record if cost is not None else None
    if provider is not None:
        record["currency"] = provider.currency
    return price is not None


def _tokens(record: dict[str, Any], key: str) -> int:
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _open(path: Path, mode: Literal["rb", "wb"]) -> gzip.GzipFile | BinaryIO:
    """A record file, gzipped when its name ends in .gz: rotated logs are, and the reports read them so."""
    return gzip.open(path, mode) if is_gzip(path) else open(path, mode)


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.repriced{path.suffix}")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="meterproxy reprice", description=__doc__)
    parser.add_argument("--file", required=True, type=Path, help="the record file to re-price")
    parser.add_argument("--config", required=True, type=Path, help="the config with the prices to apply")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the copy (default: next to FILE, with .repriced before its last extension: "
        "logs/cost.jsonl gives logs/cost.repriced.jsonl)",
    )
    args = parser.parse_args(argv)
    if not args.config.exists():
        # load_config's hint (METERPROXY_CONFIG) is serve's and report's: reprice reads only --config.
        print(
            f"meterproxy reprice: --config {args.config}: no such file; "
            "give the config with the prices to apply",
            file=sys.stderr,
        )
        return 2
    try:
        # Re-pricing never uses the provider keys: an unset ${VAR} naming one stays as written, as in reports.
        config = load_config(args.config, os.environ, keep_unset=True)
    except ConfigError as exc:
        print(f"meterproxy reprice: config error: {exc}", file=sys.stderr)
        return 2
    output: Path = args.output or default_output(args.file)
    problem = None
    if not args.file.exists():
        problem = f"--file {args.file}: no such file; give the record file to re-price"
    elif args.file.is_dir():
        problem = f"--file {args.file} is a folder; give the record file to re-price"
    elif output.is_dir():
        problem = f"--output {output} is a folder; give the path of the copy to write"
    elif not output.parent.is_dir():
        problem = (
            f"--output {output}: there is no folder {output.parent}; create it or choose another --output"
        )
    elif output.resolve() == args.file.resolve():
        problem = "--output must differ from --file; the original stays untouched"
    if problem is not None:
        print(f"meterproxy reprice: {problem}", file=sys.stderr)
        return 2
    priced = unpriced = 0
    opened = False
    try:
        with _open(args.file, "rb") as source, _open(output, "wb") as target:
            opened = True
            for line in source:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    record = None
                if not isinstance(record, dict) or "timestamp" not in record:
                    target.write(line)  # not a record: copied as it is
                    continue
                if reprice(record, config):
                    priced += 1
                else:
                    unpriced += 1
                target.write(orjson.dumps(record) + b"\n")
    except (EOFError, gzip.BadGzipFile) as exc:  # a .gz cut short, or not gzip: raised as it is read
        # The copy was opened, so emptied already: none is left with only the records before the fault.
        output.unlink(missing_ok=True)
        print(f"meterproxy reprice: --file {args.file}: cannot read it: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # An error of open names its file; one of a write (a full disk, a size limit) names none: it is the
        # copy's, and a copy cut short is not left to pass for a whole one.
        failed = exc.filename
        if failed is None:
            failed = output
            if opened and output.is_file():
                output.unlink()
        print(f"meterproxy reprice: {failed}: {(exc.strerror or str(exc)).lower()}", file=sys.stderr)
        return 2
    print(f"{priced} record{'s' if priced != 1 else ''} repriced, {unpriced} unpriced, written to {output}")
    return 0
