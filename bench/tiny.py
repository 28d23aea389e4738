"""`--tiny` for every bench script: the same code paths at a size that runs in seconds (the numbers mean
nothing), always into an --out of the caller's, so a smoke test never overwrites bench/results
(tests/test_bench.py runs each script this way)."""
import json


def parse(ap, argv, tiny: dict, results: str):
    """Add --tiny to `ap` (its settings `tiny` fill the options not given) and parse `argv`; --tiny
    without --out is refused, so `results` (what the script writes otherwise) stays as it is."""
    ap.add_argument("--tiny", action="store_true",
                    help=f"smoke test: {tiny} unless given; needs --out (the numbers mean nothing)")
    if ap.parse_known_args(argv)[0].tiny:
        ap.set_defaults(**tiny)
    args = ap.parse_args(argv)
    if args.tiny and not args.out:
        ap.error(f"--tiny needs --out FILE: it must not overwrite {results}")
    return args


def write(doc: dict, args, default) -> None:
    """A bench's results: marked `tiny` under --tiny, written atomically to --out (else `default`), printed."""
    from laser_tool.fileio import atomic_write_json  # after the script has put the project on sys.path
    if args.tiny:
        doc["tiny"] = True
    atomic_write_json(args.out or default, doc)
    print(json.dumps(doc, indent=2))
