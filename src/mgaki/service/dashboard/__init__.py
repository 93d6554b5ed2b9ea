"""The clinicians' dashboard at ``/ui/``: routes, the data behind a patient page, its charts, the dose
planner and the static pages (``static/``)."""
