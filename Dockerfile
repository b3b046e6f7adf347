FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY services services
COPY localinfra localinfra
RUN pip install --no-cache-dir .
USER nobody
CMD ["loyalty", "--help"]
