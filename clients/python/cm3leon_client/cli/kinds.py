"""`jobs submit KIND`'s subcommands, generated from the proto: one per field of the `JobRequest.kind` oneof, with one
option per field of the kind's message, so a kind added to jobs.proto gets its subcommand with no edit here.

How fields become command-line parameters:
- the kind message's first field is the positional argument (the prompt, the image, the objects, ...);
- scalars are options of their type; enums are choices of their value names (`--style short`);
- images (`ImageInput`) are a file path or `key:OBJECT` (an earlier job's input or output);
- a nested message of scalars (`Sampling`) is flattened: its fields are options of their own (`--seed`);
- a repeated message is written compactly: its scalars comma-separated (a Box: `x0,y0,x1,y1`), a leading text
  joined with '@' (a GroundedObject: `large red circle@0,0,0.33,0.33`).
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

import typer
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from cm3leon_client.api import common_pb2, jobs_pb2
from cm3leon_client.builders import image_input

IMAGE_MESSAGE = common_pb2.ImageInput.DESCRIPTOR.full_name
SCALARS: dict[int, type] = {
    FieldDescriptor.CPPTYPE_STRING: str,
    FieldDescriptor.CPPTYPE_FLOAT: float,
    FieldDescriptor.CPPTYPE_DOUBLE: float,
    FieldDescriptor.CPPTYPE_INT32: int,
    FieldDescriptor.CPPTYPE_INT64: int,
    FieldDescriptor.CPPTYPE_UINT32: int,
    FieldDescriptor.CPPTYPE_UINT64: int,
    FieldDescriptor.CPPTYPE_BOOL: bool,
}
# Short names the command line has always accepted, hidden aliases of the generated subcommands.
ALIASES = {
    "text_to_image": "t2i",
    "visual_question": "vqa",
    "segmentation": "segment",
    "structure_guided": "structure",
    "grounded_generation": "grounded",
    "text_rendering": "render",
}


def kind_fields() -> list[FieldDescriptor]:
    """The fields of the `JobRequest.kind` oneof: one per job kind."""
    return list(jobs_pb2.JobRequest.DESCRIPTOR.oneofs_by_name["kind"].fields)


def is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def is_image(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name == IMAGE_MESSAGE


def is_flat_message(descriptor: Descriptor) -> bool:
    """A message of scalars and enums only (flattened into options of its own)."""
    return all(f.message_type is None and not is_repeated(f) for f in descriptor.fields)


def enum_choices(descriptor: EnumDescriptor) -> type[Enum]:
    """The enum's values as choices: DECODING_METHOD_CFG -> "cfg" (the UNSPECIFIED value is the default)."""
    prefix = descriptor.values[0].name.removesuffix("UNSPECIFIED")
    names = [v.name.removeprefix(prefix).lower() for v in descriptor.values if not v.name.endswith("_UNSPECIFIED")]
    return Enum(descriptor.name, {name: name for name in names})  # type: ignore[return-value]


def enum_value(descriptor: EnumDescriptor, choice: Enum | str) -> int:
    """The number of a choice ("short", or the Enum member typer parsed) of `descriptor`."""
    prefix = descriptor.values[0].name.removesuffix("UNSPECIFIED")
    name = choice.value if isinstance(choice, Enum) else choice
    value = descriptor.values_by_name.get(prefix + str(name).upper())
    if value is None:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(m.value for m in enum_choices(descriptor))}")
    return value.number


def compact_syntax(descriptor: Descriptor) -> str:
    """How one value of a repeated message is written: "X0,Y0,X1,Y1", "DESCRIPTION@X0,Y0,X1,Y1"."""
    fields = list(descriptor.fields)
    if fields and fields[0].cpp_type == FieldDescriptor.CPPTYPE_STRING and len(fields) == 2 and fields[1].message_type:
        return f"{fields[0].name.upper()}@{compact_syntax(fields[1].message_type)}"
    return ",".join(f.name.upper() for f in fields)


def parse_compact(descriptor: Descriptor, text: str) -> Message:
    """One repeated message's value from its compact text (see `compact_syntax`)."""
    fields = list(descriptor.fields)
    message = message_for(descriptor)
    if fields and fields[0].cpp_type == FieldDescriptor.CPPTYPE_STRING and len(fields) == 2 and fields[1].message_type:
        head, separator, rest = text.rpartition("@")
        if not separator or not head:
            raise typer.BadParameter(f"{text!r} is not {compact_syntax(descriptor)}")
        setattr(message, fields[0].name, head)
        getattr(message, fields[1].name).CopyFrom(parse_compact(fields[1].message_type, rest))
        return message
    parts = text.split(",")
    if len(parts) != len(fields):
        raise typer.BadParameter(f"{text!r} is not {compact_syntax(descriptor)}")
    for field, part in zip(fields, parts, strict=True):
        try:
            setattr(message, field.name, SCALARS[field.cpp_type](part))
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not {compact_syntax(descriptor)}: {part!r}") from None
    return message


def message_for(descriptor: Descriptor) -> Message:
    return message_factory.GetMessageClass(descriptor)()


@dataclass(frozen=True)
class Flag:
    """One command-line parameter and where its value goes: `path` is the field path in the kind's message."""

    name: str
    path: tuple[FieldDescriptor, ...]
    parameter: inspect.Parameter

    def apply(self, message: Message, value: Any) -> None:
        if value is None or value == []:
            return
        for field in self.path[:-1]:
            message = getattr(message, field.name)
        field = self.path[-1]
        if is_image(field):
            getattr(message, field.name).CopyFrom(image_input(str(value)))
        elif field.message_type is not None:
            getattr(message, field.name).extend(parse_compact(field.message_type, v) for v in value)
        elif field.enum_type is not None:
            setattr(message, field.name, enum_value(field.enum_type, value))
        else:
            setattr(message, field.name, value)


def field_parameter(name: str, field: FieldDescriptor, message: str, positional: bool) -> inspect.Parameter:
    """The typer parameter of one field (positional for the kind's first field, else an option)."""
    if is_image(field):
        annotation: Any = str
        what = "an image: a PNG/JPEG path or key:OBJECT (an earlier job's input or output)"
    elif field.message_type is not None:
        annotation = list[str]
        what = f"one or more {compact_syntax(field.message_type)} (x, y in [0, 1] of the image)"
    elif field.enum_type is not None:
        annotation = enum_choices(field.enum_type)
        what = ""
    else:
        annotation = SCALARS[field.cpp_type]
        what = ""
    help_text = f"{message}.{field.name}" + (f": {what}." if what else " (unset: the model's default).")
    if positional:
        info: Any = typer.Argument(help=help_text, metavar=field.name.upper())
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[annotation, info])
    if annotation is bool:
        flag = name.replace("_", "-")
        info = typer.Option(f"--{flag}/--no-{flag}", help=help_text, rich_help_panel="Options of the kind")
        annotation = bool | None
    else:
        info = typer.Option(help=help_text, rich_help_panel="Options of the kind")
        annotation = annotation | None
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[annotation, info])


def kind_flags(descriptor: Descriptor) -> list[Flag]:
    """Every parameter of one kind's message: its fields, with flat nested messages' fields flattened."""
    flags: list[Flag] = []
    for index, field in enumerate(descriptor.fields):
        if field.message_type is not None and not is_image(field) and not is_repeated(field):
            if not is_flat_message(field.message_type):
                continue  # a deeper shape than the command line can say; build such requests with the SDK
            own_names = {f.name for f in descriptor.fields}
            for sub in field.message_type.fields:
                name = f"{field.name}_{sub.name}" if sub.name in own_names else sub.name
                flags.append(Flag(name, (field, sub), field_parameter(name, sub, field.message_type.name, False)))
            continue
        flags.append(Flag(field.name, (field,), field_parameter(field.name, field, descriptor.name, index == 0)))
    return flags


def request_flags() -> list[Flag]:
    """The `JobRequest`'s own fields beside the kind (such as `plain`): options of every kind's subcommand."""
    fields = [f for f in jobs_pb2.JobRequest.DESCRIPTOR.fields if f.containing_oneof is None]
    return [Flag(f.name, (f,), field_parameter(f.name, f, "JobRequest", False)) for f in fields]


def request_builder(kind: FieldDescriptor) -> tuple[list[inspect.Parameter], Callable[[dict[str, Any]], Any]]:
    """The kind's parameters, and the function making its `JobRequest` from their parsed values (popped)."""
    flags, common = kind_flags(kind.message_type), request_flags()

    def build(values: dict[str, Any]) -> jobs_pb2.JobRequest:
        request = jobs_pb2.JobRequest()
        body = getattr(request, kind.name)
        body.SetInParent()
        for flag in flags:
            flag.apply(body, values.pop(flag.name))
        for flag in common:
            flag.apply(request, values.pop(flag.name))
        return request

    return [flag.parameter for flag in [*flags, *common]], build


def build_request(kind: str, values: dict[str, Any]) -> jobs_pb2.JobRequest:
    """The `JobRequest` of `kind` from parameter values by name (missing ones unset); for tests and scripts."""
    field = jobs_pb2.JobRequest.DESCRIPTOR.fields_by_name[kind]
    parameters, build = request_builder(field)
    return build({p.name: values.get(p.name) for p in parameters})


def kind_help(kind: FieldDescriptor) -> str:
    return f"Submit a job of kind {kind.name} ({kind.message_type.full_name})."


def command_name(kind: FieldDescriptor) -> str:
    return kind.name.replace("_", "-")
