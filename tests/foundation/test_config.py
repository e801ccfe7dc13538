"""Settings: flags > SWIFTMESH_* environment > YAML file > defaults, with clear errors."""

from __future__ import annotations

import pytest

from swiftmesh.runtime.config import ConfigError, Settings


def test_defaults_put_everything_on_localhost_under_one_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SWIFTMESH_DATA_DIR", str(tmp_path))
    s = Settings.load()
    assert s.hub.target == "127.0.0.1:50051"
    assert s.hub_cache_dir == tmp_path / "hub"
    assert s.trainer_state_dir == tmp_path / "trainer"
    assert s.auth_token is None


def test_precedence_flags_env_yaml(monkeypatch, tmp_path):
    cfg = tmp_path / "swiftmesh.yaml"
    cfg.write_text("hub:\n  port: 7001\n  quota_bytes: 1000\ntrainer:\n  port: 7002\nrpc_timeout_s: 5\n")
    monkeypatch.setenv("SWIFTMESH_HUB__PORT", "7101")
    s = Settings.load(cfg, trainer={"port": 7202})
    assert s.hub.port == 7101  # env beats yaml
    assert s.hub.quota_bytes == 1000  # yaml beats defaults, nested fields merge
    assert s.trainer.port == 7202  # flags beat yaml
    assert s.rpc_timeout_s == 5
    monkeypatch.setenv("SWIFTMESH_CONFIG", str(cfg))
    monkeypatch.delenv("SWIFTMESH_HUB__PORT")
    assert Settings.load().hub.port == 7001  # SWIFTMESH_CONFIG names the file


def test_invalid_settings_name_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("SWIFTMESH_HUB__PORT", "99999")
    with pytest.raises(ConfigError, match=r"hub\.port"):
        Settings.load()
    monkeypatch.delenv("SWIFTMESH_HUB__PORT")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("worker:\n  engine: tensorrt\n")
    with pytest.raises(ConfigError, match=r"worker\.engine"):
        Settings.load(cfg)
    cfg.write_text("hubb:\n  port: 1\n")
    with pytest.raises(ConfigError, match="hubb"):
        Settings.load(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "missing.yaml")


def test_secret_token_is_not_printed(monkeypatch):
    monkeypatch.setenv("SWIFTMESH_AUTH_TOKEN", "hunter2")
    s = Settings.load()
    assert s.auth_token.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s)


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_token_is_refused_not_taken_as_no_auth(monkeypatch, blank):
    # Before: SWIFTMESH_AUTH_TOKEN= loaded as a token "" that every "Bearer " header matched.
    monkeypatch.setenv("SWIFTMESH_AUTH_TOKEN", blank)
    with pytest.raises(ConfigError, match="SWIFTMESH_AUTH_TOKEN is empty"):
        Settings.load()
    monkeypatch.delenv("SWIFTMESH_AUTH_TOKEN")
    with pytest.raises(ConfigError, match="SWIFTMESH_AUTH_TOKEN is empty"):
        Settings.load(auth_token=blank)


def test_configured_peers_are_only_the_addresses_actually_configured(monkeypatch, tmp_path):
    # Before: the default ports of services never configured (127.0.0.1:50052/50053/50054) counted,
    # so the hub sent its token to a hub:// source naming 127.0.0.1:50054, where anyone could listen.
    monkeypatch.setenv("SWIFTMESH_HUB__ADDRESS", "hub.svc:50051")
    monkeypatch.setenv("SWIFTMESH_GATEWAY__ADDRESS", "gateway.svc:50055")
    assert Settings.load().configured_peers() == {"hub.svc:50051", "gateway.svc:50055"}
    monkeypatch.setenv("SWIFTMESH_TRAINER__PORT", "7002")  # a port alone (env) names host:port
    monkeypatch.setenv("SWIFTMESH_WORKER__METRICS_PORT", "9999")  # not an address
    cfg = tmp_path / "c.yaml"
    cfg.write_text("aligner:\n  host: 10.0.0.5\n")
    peers = Settings.load(cfg, trusted_peers=["10.1.1.1:50051"], gateway={"workers": ["w:50054"]}).configured_peers()
    assert peers == {"hub.svc:50051", "gateway.svc:50055", "127.0.0.1:7002", "10.0.0.5:50053",
                     "10.1.1.1:50051", "w:50054"}
    monkeypatch.delenv("SWIFTMESH_HUB__ADDRESS")
    monkeypatch.delenv("SWIFTMESH_GATEWAY__ADDRESS")
    monkeypatch.delenv("SWIFTMESH_TRAINER__PORT")
    assert Settings.load().configured_peers() == set()


def test_tls_files_are_checked_at_load(monkeypatch, tmp_path):
    # Before: an empty CA_FILE was Path("") (IsADirectoryError at start), a missing file a
    # FileNotFoundError traceback, a key of another certificate "Failed to bind to address".
    from swiftmesh.runtime.certs import make_dev_pki

    pki = make_dev_pki(tmp_path / "pki", ["hub", "other"])
    monkeypatch.setenv("SWIFTMESH_TLS__CA_FILE", "")
    assert Settings.load().tls.ca_file is None
    monkeypatch.setenv("SWIFTMESH_TLS__CA_FILE", str(pki["ca"].cert))
    good = Settings.load(tls={"cert_file": pki["hub"].cert, "key_file": pki["hub"].key})
    assert good.tls.key_file == pki["hub"].key

    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=f"SWIFTMESH_TLS__CERT_FILE={missing}: no such file"):
        Settings.load(tls={"cert_file": missing, "key_file": pki["hub"].key})
    with pytest.raises(ConfigError, match=f"SWIFTMESH_TLS__KEY_FILE={pki['other'].key}: is not the private key"):
        Settings.load(tls={"cert_file": pki["hub"].cert, "key_file": pki["other"].key})
    with pytest.raises(ConfigError, match=f"SWIFTMESH_TLS__CA_FILE={tmp_path}: not a regular file"):
        Settings.load(tls={"ca_file": tmp_path})
    with pytest.raises(ConfigError, match=f"SWIFTMESH_TLS__CA_FILE={pki['hub'].key}: not PEM CA certificates"):
        Settings.load(tls={"ca_file": pki["hub"].key})
    with pytest.raises(ConfigError, match="set both or neither"):
        Settings.load(tls={"cert_file": pki["hub"].cert})
