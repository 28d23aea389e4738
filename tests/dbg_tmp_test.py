from test_study import *
def test_dbg(tiny_study):
    tmp, calls = tiny_study
    lines = []
    kw = dict(out=tmp / "st", device="cpu", data_dir=tmp / "data", heal_epochs=0, log=lines.append)
    try:
        study.run_study("quick", **kw)
    finally:
        print("\n".join(lines))
