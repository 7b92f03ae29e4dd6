"""The words every layer shares, each defined once: how a request names a model version
(``address``), what an adapter directory holds (``layout``), the scores an evaluation reports
(``scores``). The floor everything else stands on: these modules import nothing of the gateway."""
