"""Enterprise WeChat (WeCom) bots answered by a model or adapter.

Two channels, one crypto (``crypto``), one URL per bot (``/wecom/{bot}``, ``routes``):

- ``app``: a self-built application's callback. WeCom gives a callback 5 seconds, and a model is
  slower, so the callback is answered with an empty 200 at once and the answer is sent afterwards
  through WeCom's ``message/send`` API (``api``).
- ``aibot``: an AI bot in API mode. The first callback is answered with a stream id, and WeCom then
  polls that stream about once a second; each poll gets the answer so far (``service``).

``config`` loads the bots, ``messages`` parses and builds callback bodies, ``store`` bounds the
dedup and stream state, ``text`` cuts answers to WeCom's byte limits.
"""
