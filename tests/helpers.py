"""Assertions shared by the CLI tests."""


def assert_clean_error(result, *needles):
    assert result.exit_code != 0
    message = result.output.strip()
    assert message.startswith("Error: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message
