"""The OpenAI wire model and its translation to engine terms: the request and response schema
(``protocol``), the bounds on a request's JSON Schemas (``schema_limits``), and the pure conversion
between OpenAI's shapes and the engine's (``conversion``). Below the completion path that serves it
and the routes that receive it; above the engine, whose terms it translates to."""
