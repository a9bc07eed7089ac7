import pytest

from scaling.config import dump_config, load_config
from scaling.errors import InputError
from tests.conftest import run_cli


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  crop: 32\n  val_fraction: 0.1\nrun:\n  dir: /tmp/x\n")
    cfg = load_config(f, ["data.batch_size=16", "data.path=/data/w", "world.seed=3"])
    assert cfg.data.crop == 32 and cfg.data.val_fraction == 0.1
    assert cfg.data.batch_size == 16 and cfg.data.path == "/data/w"
    assert cfg.world.seed == 3 and cfg.run.dir == "/tmp/x"
    assert cfg.data.crops_per_site == load_config().data.crops_per_site  # untouched default
    # a dumped config loads back to the same tree
    g = tmp_path / "d.yaml"
    g.write_text(dump_config(cfg))
    assert load_config(g) == cfg


def test_int_accepted_for_float_and_null_for_optional():
    cfg = load_config(None, ["data.val_fraction=0", "data.path="])
    assert cfg.data.val_fraction == 0.0 and isinstance(cfg.data.val_fraction, float)
    assert cfg.data.path is None


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("data:\n  crp: 3\n", [], "data.crp"),
        ("", ["nosuch.steps=3"], "'nosuch'"),
        ("", ["data.crop=big"], "data.crop"),
        ("", ["data.crop=4"], "data.crop"),
        ("", ["data.val_fraction=1.5"], "data.val_fraction"),
        ("", ["data.batch_size=true"], "data.batch_size"),
        ("", ["world.preset=huge"], "world.preset"),
        ("", ["world.preset=genome"], "no images"),
        ("", ["train.eval_every=-1"], "train.eval_every"),
        ("", ["model.pos_base=1"], "model.pos_base"),
        ("data: [1, 2]\n", [], "data"),
        ("data:\n  crop: [\n", [], "not valid YAML"),
        ("", ["nokeyvalue"], "key=value"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, overrides, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(InputError) as e:
        load_config(f, overrides)
    assert needle in str(e.value)


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    rc, out, err = run_cli("stream", "--data", tmp_path, "--set", "data.nope=1")
    assert rc == 2
    assert err.strip().count("\n") == 0 and "data.nope" in err and err.startswith("error:")
    rc, _, err = run_cli("synth", "--out", tmp_path / "w", "--preset", "galaxy")
    assert rc == 2 and "galaxy" in err and not (tmp_path / "w").exists()


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.joinpath("jobs", "configs").glob("*.yaml"))
    assert configs
    for c in configs:
        load_config(c)


def test_cluster_yaml_binds_no_public_address():
    from pathlib import Path

    text = Path(__file__).parent.parent.joinpath("cluster.yaml").read_text()
    assert "0.0.0.0" not in text and "--dashboard-host=127.0.0.1" in text
