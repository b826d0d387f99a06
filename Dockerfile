FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir .
COPY config.yml ./
RUN mkdir -p logs

# Mount your own config at /app/config.yml and keep records outside the container in /app/logs.
VOLUME ["/app/logs"]
EXPOSE 9002
CMD ["meterproxy", "serve", "--config", "/app/config.yml", "--host", "0.0.0.0", "--port", "9002"]
