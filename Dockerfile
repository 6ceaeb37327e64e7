# payhooks: one image for the ingress, the workers and rq-dashboard.
# Dependencies are installed from .ci/constraints.txt (pinned), as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY .ci/constraints.txt .ci/constraints.txt
COPY ingress ingress
COPY workers workers
COPY shared shared
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c .ci/constraints.txt ".[dev]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 payhooks
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "payhooks[dev]" \
    && rm -rf /wheels
USER payhooks
WORKDIR /home/payhooks
EXPOSE 8080 9181
CMD ["payhooks", "ingress"]
