# payhooks: one image for the ingress, the workers and rq-dashboard, with nothing else.
# Dependencies are installed from .ci/constraints.txt (pinned), as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY .ci/constraints.txt .ci/constraints.txt
COPY ingress ingress
COPY workers workers
COPY shared shared
COPY console console
# production only: the sandbox (payhooks dev, simulate, the simulators) stays out, as do
# the tests, benchmarks and chaos, which are not copied
RUN rm -rf shared/sandbox \
    && pip wheel --no-cache-dir --wheel-dir /wheels -c .ci/constraints.txt ".[dashboard]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 payhooks
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "payhooks[dashboard]" \
    && rm -rf /wheels
USER payhooks
WORKDIR /home/payhooks
EXPOSE 8080 9181
CMD ["payhooks", "ingress"]
