"""The local web app (`nanodiff app`): a plain page and a small Starlette API over the library.

engine.py  the models a server offers, checked settings, and the jobs (generate, edit,
           forward process, samplers side by side, guidance sweep) with step previews
jobs.py    the bounded job queue: a fixed number running, a fixed number waiting, cancel
server.py  the HTTP routes and the streamed events
static/    index.html, app.js, app.css: no build step, nothing fetched from outside
"""
