"""Models as bitalloc sees them: a `Task` (model, calibration data, loss, quality, units), and
`load_model` for built-in names, transformers folders, GGUF files and `package.module:function`."""
from bitalloc.models.loader import BUILTIN, load_model  # noqa: F401
from bitalloc.models.task import Task  # noqa: F401
