// Drives the truc web console in a real browser (Debian's chromium,
// headless) and checks what each role sees and does. Run by
// tests/console_browser.rs, which starts the hub and passes, as JSON in
// TRUC_BROWSER_CASE: the console's base URL, one account per role, the
// envelopes to look for, and where to save screenshots. Exits 1 with the
// first failed check.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const c = JSON.parse(process.env.TRUC_BROWSER_CASE);
mkdirSync(c.shots, { recursive: true });
const browser = await chromium.launch({
  executablePath: c.chromium,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

let checks = 0;
function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  checks++;
}

async function session(role, viewport = { width: 1280, height: 900 }) {
  const ctx = await browser.newContext({ viewport, locale: 'vi-VN' });
  const page = await ctx.newPage();
  // Nothing may come from anywhere but the hub.
  page.on('request', (r) => {
    if (!r.url().startsWith(c.base)) throw new Error(`request off the hub: ${r.url()}`);
  });
  await page.goto(`${c.base}/console/`);
  check(page.url().endsWith('/console/login'), `${role}: sent to the login page`);
  const a = c.accounts[role];
  await page.fill('input[name=name]', a.name);
  await page.fill('input[name=password]', a.password);
  await Promise.all([page.waitForURL(`${c.base}/console/`), page.click('button[type=submit]')]);
  return { ctx, page };
}

async function shot(page, name) {
  await page.screenshot({ path: `${c.shots}/${name}.png`, fullPage: true });
}

async function navLinks(page) {
  return page.$$eval('header nav a', (as) => as.map((a) => a.textContent.trim()));
}

try {
  // A wrong password is refused on the page.
  {
    const ctx = await browser.newContext();
    const page = await ctx.newPage();
    await page.goto(`${c.base}/console/login`);
    await page.fill('input[name=name]', c.accounts.operator.name);
    await page.fill('input[name=password]', 'not the password at all');
    await page.click('button[type=submit]');
    check((await page.textContent('.error')).includes('Sai tên tài khoản hoặc mật khẩu'), 'wrong password refused');
    await shot(page, 'login-refused');
    await ctx.close();
  }

  // Each role logs in and sees the navigation its role allows.
  const want = {
    admin: ['Tổng quan', 'Đơn vị', 'Văn bản', 'Hàng đợi', 'Báo cáo', 'Cảnh báo', 'Nhật ký', 'Tài khoản'],
    operator: ['Tổng quan', 'Đơn vị', 'Văn bản', 'Hàng đợi', 'Báo cáo', 'Cảnh báo', 'Nhật ký'],
    auditor: ['Tổng quan', 'Đơn vị', 'Văn bản', 'Hàng đợi', 'Báo cáo', 'Cảnh báo', 'Nhật ký'],
    agency: ['Tổng quan', 'Đơn vị', 'Văn bản', 'Báo cáo'],
  };
  const s = {};
  for (const role of Object.keys(want)) {
    s[role] = await session(role);
    const links = await navLinks(s[role].page);
    check(JSON.stringify(links) === JSON.stringify(want[role]), `${role} navigation: ${links}`);
    check((await s[role].page.textContent('h1')) === 'Tổng quan', `${role} overview`);
    await shot(s[role].page, `overview-${role}`);
  }

  // The operator finds the sent envelope and reads its timeline.
  {
    const p = s.operator.page;
    await p.click('header nav a:has-text("Văn bản")');
    await p.fill('input[name=id]', c.envelope.id);
    await Promise.all([p.waitForURL(/envelopes\?/), p.click('form.search button')]);
    check((await p.textContent('main table')).includes(c.envelope.subject), 'search finds the envelope');
    await shot(p, 'envelopes-search');
    await Promise.all([p.waitForURL(/envelopes\/view/), p.click(`a:has-text("${c.envelope.id}")`)]);
    const body = await p.textContent('main');
    check(body.includes(c.envelope.subject) && body.includes(c.envelope.to), 'timeline shows the envelope');
    check(body.includes('đã tiếp nhận') && body.includes('đã xếp hàng'), 'timeline shows the states');
    await shot(p, 'envelope-timeline');
  }

  // The operator retries the dead letter, behind a confirmation.
  {
    const p = s.operator.page;
    await p.goto(`${c.base}/console/dead`);
    check((await p.textContent('main table')).includes(c.dead.id), 'the dead letter is listed');
    await shot(p, 'dead-letters');
    await Promise.all([p.waitForURL(/dead\/act/), p.click('button:has-text("Gửi lại các thư này")')]);
    check((await p.textContent('.confirm')).includes('Gửi lại 1 thư'), 'confirmation says what it will do');
    await shot(p, 'dead-retry-confirm');
    await p.click('.confirm button:has-text("Xác nhận")');
    await p.waitForSelector('p.notice');
    check((await p.textContent('p.notice')).includes('1 thư'), 'one letter retried');
    await shot(p, 'dead-retry-done');
    await p.goto(`${c.base}/console/queues`);
    await shot(p, 'queues');
  }

  // The agency account sees its own envelope, not another agency's, and
  // has no queue page.
  {
    const p = s.agency.page;
    await p.goto(`${c.base}/console/envelopes`);
    const list = await p.textContent('main');
    check(list.includes(c.envelope.id) && !list.includes(c.other.id), 'agency list is its own traffic');
    await shot(p, 'agency-envelopes');
    const r = await p.goto(`${c.base}/console/envelopes/view?from=${c.other.from}&id=${encodeURIComponent(c.other.id)}`);
    check(r.status() === 404, `another agency's envelope: ${r.status()}`);
    check((await p.textContent('h1')) === 'Không tìm thấy', 'not found page');
    await shot(p, 'agency-other-envelope');
    const q = await p.goto(`${c.base}/console/queues`);
    check(q.status() === 403, `agency on queues: ${q.status()}`);
    await shot(p, 'agency-forbidden');
  }

  // The auditor verifies the audit chain; it sees the retry by the operator.
  {
    const p = s.auditor.page;
    await p.goto(`${c.base}/console/audit`);
    await p.click('button:has-text("Kiểm tra chuỗi băm")');
    await p.waitForSelector('p.notice');
    check((await p.textContent('p.notice')).includes('Chuỗi nhật ký nguyên vẹn'), 'audit chain verified');
    check((await p.textContent('main table')).includes(c.accounts.operator.name), 'audit names the operator');
    await shot(p, 'audit');
  }

  // The admin: accounts, agencies, reports; then English.
  {
    const p = s.admin.page;
    await p.goto(`${c.base}/console/accounts`);
    check((await p.textContent('main table')).includes(c.accounts.agency.name), 'accounts listed');
    await shot(p, 'accounts');
    await p.goto(`${c.base}/console/agencies`);
    await shot(p, 'agencies');
    await p.click(`a:has-text("${c.envelope.from}")`);
    check((await p.textContent('main')).includes('Khóa truy cập'), 'agency detail');
    await shot(p, 'agency-detail');
    await p.goto(`${c.base}/console/reports`);
    check((await p.textContent('main table')).includes(c.envelope.from), 'report rows');
    await shot(p, 'reports');
    await p.goto(`${c.base}/console/alerts`);
    check((await p.textContent('h1')) === 'Cảnh báo', 'alerts page');
    check((await p.textContent('main table')).includes('agency-offline'), 'the open alert is listed');
    await shot(p, 'alerts');
    await p.click('footer a:has-text("English")');
    await p.waitForURL(`${c.base}/console/`);
    const links = await navLinks(p);
    check(links[0] === 'Overview' && links.includes('Accounts'), `English navigation: ${links}`);
    check((await p.getAttribute('html', 'lang')) === 'en', 'lang attribute');
    await shot(p, 'overview-en');
    await p.click('footer a:has-text("Tiếng Việt")');
    check((await navLinks(p))[0] === 'Tổng quan', 'back to Vietnamese');
  }

  // A phone: the page fits its width (tables scroll inside their box).
  {
    const { ctx, page } = await session('operator', { width: 390, height: 844 });
    for (const path of ['/console/', '/console/queues', '/console/reports']) {
      await page.goto(`${c.base}${path}`);
      const [sw, iw] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
      check(sw <= iw, `${path} fits a phone: ${sw} > ${iw}`);
    }
    await page.goto(`${c.base}/console/`);
    await shot(page, 'phone-overview');
    await ctx.close();
  }

  // Logout ends the session.
  {
    const p = s.operator.page;
    await p.click('button:has-text("Đăng xuất")');
    await p.waitForURL(/login/);
    await p.goto(`${c.base}/console/queues`);
    check(p.url().endsWith('/console/login'), 'logged out');
  }
  console.log(`browser checks passed: ${checks}`);
} catch (e) {
  console.error(e.message);
  process.exitCode = 1;
} finally {
  await browser.close();
}
