"""The workflow configuration: checked against workflow/schemas/config.schema.yaml, its defaults
filled in, and its first problem said in one line.

The workflow (workflow/rules/common.smk) and every command that takes `--config` go through
`check_config`, so a wrong type, an unknown key or an empty file reads the same everywhere:
"datasets.nerve.epochs: 'four' is not of type integer", "unknown key 'foo' at the top level;
known keys: ...", "the config file is empty", never a schema dump or a traceback.
"""

from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match

from rdiunet.errors import UserError

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    try:
        return yaml.safe_load(SCHEMA.read_text())
    except OSError as error:
        raise UserError(f"cannot read the configuration schema {SCHEMA} ({error.strerror})") from None


def where(path) -> str:
    return ".".join(str(part) for part in path) or "the top level"


def known_keys(schema: dict, validator) -> list[str]:
    """The keys an object schema names, following $ref and allOf as the validator resolves them."""
    keys = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        keys |= set(known_keys(resolved(part, validator), validator))
    if "$ref" in schema:
        keys |= set(known_keys(resolved(schema, validator), validator))
    return sorted(keys)


def resolved(schema: dict, validator) -> dict:
    if "$ref" not in schema:
        return schema
    return validator._resolver.lookup(schema["$ref"]).contents


def shortened(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(error, validator) -> str:
    """One line: where the problem is, and what it is."""
    at = where(error.absolute_path)
    if error.validator == "additionalProperties":
        known = known_keys(error.schema, validator)
        unknown = sorted(set(error.instance) - set(known))
        return f"unknown key '{unknown[0]}' at {at}; known keys: {', '.join(known)}"
    if error.validator == "required":
        return f"{at}: {error.message.replace(' is a required property', '')} is required"
    if error.validator in ("type", "enum", "const", "pattern"):
        expected = {
            "type": f"is not of type {error.validator_value}",
            "enum": f"is not one of {', '.join(map(str, error.validator_value))}",
            "const": f"must be {error.validator_value!r}",
            "pattern": f"is not {error.schema.get('description', 'a valid value here')}",
        }[error.validator]
        return f"{at}: {shortened(error.instance)} {expected}"
    if error.validator == "not" and "description" in error.schema:
        return f"{at}: {error.schema['description']}"
    message = " ".join(error.message.split())
    if len(message) <= 120:
        return f"{at}: {message}"
    return (
        f"{at}: {shortened(error.instance)} is invalid ({error.validator} {shortened(error.validator_value)})"
    )


def fill_defaults(validator_class):
    """The validator, extended to fill in each property's default where the key is absent (the
    jsonschema documentation's recipe; Snakemake's validate does the same)."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    instance[key] = subschema["default"]
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": properties})


def check_config(config, source: str = "the configuration") -> dict:
    """`config` checked and its defaults filled in (in place), or a UserError naming the first
    problem in one line."""
    if config is None or config == {}:
        raise UserError(f"{source} is empty; start from config.yaml")
    if not isinstance(config, dict):
        raise UserError(
            f"{source} must be a mapping of keys to values (like config.yaml), not {type(config).__name__}"
        )
    schema = load_schema()
    validator = Draft202012Validator(schema)
    error = best_match(validator.iter_errors(config))
    if error is not None:
        raise UserError(f"{source}: {describe(error, validator)}")
    fill_defaults(Draft202012Validator)(schema).validate(config)
    return config


def read_config(path: Path) -> dict:
    """A config.yaml read and checked (`rdiunet tables|figures|report --config`)."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise UserError(f"cannot read --config {path} ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise UserError(f"--config {path} is not valid YAML ({' '.join(str(error).split())})") from None
    return check_config(config, f"the config file {path}")
