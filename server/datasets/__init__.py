"""The files people bring: training conversations in the formats they come in (``conversations``:
alpaca, sharegpt, OpenAI messages, query-response) and evaluation test sets (``testset``), each bad
record named by ``FILE:LINE``. Pure parsing, below every layer that reads them: the trainer, the
registry's eval gate, evaluation, and the feedback export's check of what it writes."""
