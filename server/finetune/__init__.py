"""The OpenAI fine-tuning API over the trainer: files, jobs, the queue (``service``), and their rows (``store``)."""
