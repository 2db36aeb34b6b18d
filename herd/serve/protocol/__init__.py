"""HTTP shapes: OpenAI-compatible and Llama Stack (0.2.x classic) requests and responses.

Requests are strict (a string where a number belongs is a 400, never coerced) and ignore unknown
fields, so newer or older clients that add fields keep working. Responses are built from these
models, so that every shape lives in this package: `common` (bases, ids, dumping), `openai`,
`stack` (Llama Stack native), `safety`, `scoring` and `eval`. `from herd.serve import protocol as p` gives them all.
"""
from herd.serve.protocol.agents import *
from herd.serve.protocol.common import *
from herd.serve.protocol.eval import *
from herd.serve.protocol.openai import *
from herd.serve.protocol.post_training import *
from herd.serve.protocol.responses import *
from herd.serve.protocol.safety import *
from herd.serve.protocol.scoring import *
from herd.serve.protocol.stack import *
from herd.serve.protocol.tools import *
from herd.serve.protocol.vector_stores import *
