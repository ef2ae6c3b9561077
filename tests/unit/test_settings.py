"""Settings: environment overrides, and bad configuration named by its variable."""

import pytest

from stream.settings import ConfigError, Settings, describe, load_settings


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("INTENTSTREAM_EVENTS_PARTITIONS", "12")
    monkeypatch.setenv("INTENTSTREAM_DATA_DIR", str(tmp_path))
    s = load_settings()
    assert s.kafka_bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.events_partitions == 12


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INTENTSTREAM_EVENTS_PARTITIONS", "zero"),
        ("INTENTSTREAM_EVENTS_PARTITIONS", "0"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
        ("INTENTSTREAM_STORE", "redis://"),
        ("INTENTSTREAM_INTENT_THRESHOLD", "1.5"),
        ("INTENTSTREAM_PSEUDONYM_KEY", "short"),
    ],
)
def test_bad_value_stops_with_the_variable_named(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert var in str(exc.value)


def test_production_requires_a_pseudonym_key(monkeypatch):
    monkeypatch.setenv("INTENTSTREAM_ENV", "production")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "INTENTSTREAM_PSEUDONYM_KEY" in str(exc.value)


def test_dev_key_is_created_once_and_private(tmp_path):
    s = Settings(data_dir=tmp_path)
    k1, k2 = s.secret_key(), Settings(data_dir=tmp_path).secret_key()
    assert k1 == k2 and len(k1) >= 32
    assert (tmp_path / "pseudonym.key").stat().st_mode & 0o077 == 0


def test_describe_masks_secrets():
    s = Settings(pseudonym_key="a-very-secret-key-value")
    rows = {var: value for var, value, _ in describe(s)}
    assert rows["INTENTSTREAM_PSEUDONYM_KEY"] == "***"
    assert "a-very-secret" not in str(rows)


def test_cross_field_rules_name_both_variables(monkeypatch):
    monkeypatch.setenv("INTENTSTREAM_STATE_TTL_MS", "1000")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "INTENTSTREAM_STATE_TTL_MS" in str(exc.value) and "INTENTSTREAM_CHURN_AFTER_MS" in str(exc.value)


def test_a_production_worker_requires_an_api_token_and_names_it(monkeypatch):
    monkeypatch.setenv("INTENTSTREAM_ENV", "production")
    monkeypatch.setenv("INTENTSTREAM_PSEUDONYM_KEY", "k" * 32)
    settings = load_settings()  # the other commands (the trainer) run without one
    with pytest.raises(ConfigError, match="INTENTSTREAM_API_TOKEN"):
        settings.check_worker()
    monkeypatch.setenv("INTENTSTREAM_API_TOKEN", "short")
    with pytest.raises(ConfigError, match="INTENTSTREAM_API_TOKEN"):
        load_settings()
    monkeypatch.setenv("INTENTSTREAM_API_TOKEN", "t" * 24)
    load_settings().check_worker()


def test_the_advertised_address_is_a_reachable_host(monkeypatch):
    assert Settings(web_host="127.0.0.1", web_port=7000).advertised_url == "http://127.0.0.1:7000"
    assert "0.0.0.0" not in Settings(web_host="0.0.0.0").advertised_url
    assert Settings(web_host="0.0.0.0", web_advertised_host="10.1.2.3").advertised_url == "http://10.1.2.3:6066"
