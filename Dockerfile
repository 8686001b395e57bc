# Placeholder until the install-and-operate work: one image for every `stowage` command.
# Node runs the TypeScript sources directly (type stripping), so there is no build stage yet.
FROM node:24-bookworm-slim
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY src ./src
USER node
ENTRYPOINT ["node", "/app/bin/stowage.js"]
